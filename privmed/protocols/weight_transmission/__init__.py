"""Encrypted weight transmission (Phuong & Phong 2019): both halves of SNT and FNT together.

``snt`` and ``fnt`` are the coordinator halves (the schedule); ``site`` is the
sites' half (privacy name ``aes-gcm``: the keys and the client mod that opens,
trains and seals). The primitives (AES-256-GCM, X25519 + HKDF) are in
:mod:`privmed.privacy.aes_keys`.
"""
