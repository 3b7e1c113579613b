"""Key recovery against MORE: from one known plaintext, or from the ciphertexts alone.

Papers: the weakness Vizitiu et al. 2019 acknowledge ("with enough pairs of
encrypted-unencrypted data an attacker may compute the key"); the scheme of
Kipnis & Hibshoosh 2012; Tsaban & Lifshitz 2015 ("Cryptanalysis of the MORE
symmetric key fully homomorphic encryption scheme", J. Math. Cryptol.) break
its modular variant from two ciphertexts. Here, the float variant privmed
trains with (:mod:`privmed.privacy.more`).

- **Known plaintext.** For a value m and its ciphertext C = S·diag(m, r)·S⁻¹,
  ``C − m·I = (r − m)·s₂·t₂ᵀ`` has rank one (s₂: S's second column, t₂ᵀ: S⁻¹'s
  second row). Its column space is spanned by s₂ and its kernel by s₁, S's
  first column. ``S' = [s₁, s₂]`` equals S·diag(α, β) for unknown α, β, and
  the diagonal factors cancel: ``S'⁻¹·C·S' = diag(m, r)`` for every
  ciphertext under S. One pair is enough; the attacker uses the known pair
  with the largest ``‖C − m·I‖`` (the best conditioned rank-one matrix).
- **Ciphertext only.** Every ciphertext under S has S's columns as
  eigenvectors (eigenvalues m and r). The eigenvectors of one ciphertext with
  well-separated eigenvalues give S up to scale and column order; the order
  whose decryptions hold more values equal to a known value (background
  pixels equal to 0) is the right one — random r's essentially never are.

Faithful to the published attacks' mathematics; written by hand (a few lines
of linear algebra; no library attacks MORE). The attacker gets only the
server's view (ciphertexts) and, for the first attack, the known pairs; the
harness (:func:`privmed.attacks.harness.measure_key_recovery`) holds the
plaintexts and scores "decrypted exactly".
"""

from __future__ import annotations

import torch

from privmed.privacy.more import decrypt_with

EXACT_TOL = (
    1e-4  # a value is decrypted exactly when within this of the truth (pixels are in [0, 1]; float32 ciphertexts)
)


def known_plaintext_key(values: torch.Tensor, ciphertexts: torch.Tensor) -> torch.Tensor:
    """An equivalent key ``[s₁, s₂]`` from known pairs: ``values`` (P,), their ``ciphertexts`` (P, 2, 2)."""
    c = ciphertexts.to(torch.float64).reshape(-1, 2, 2)
    m = values.to(torch.float64).reshape(-1)
    if len(m) == 0:
        raise ValueError("the known-plaintext attack needs at least one (value, ciphertext) pair")
    d = c - m[:, None, None] * torch.eye(2, dtype=torch.float64)
    best = d[torch.linalg.matrix_norm(d).argmax()]  # rank one: (r - m) s2 t2^T
    u, _, vh = torch.linalg.svd(best)
    s2, s1 = u[:, 0], vh[1]  # column space, kernel
    return torch.stack([s1, s2], dim=1)


def ciphertext_only_key(ciphertexts: torch.Tensor, *, known_value: float = 0.0) -> torch.Tensor:
    """An equivalent key from ciphertexts alone: shared eigenvectors, ordered by the known value's frequency."""
    c = ciphertexts.to(torch.float64).reshape(-1, 2, 2)
    tr, det = c[:, 0, 0] + c[:, 1, 1], torch.linalg.det(c)
    pick = c[(tr**2 - 4 * det).argmax()]  # the widest eigenvalue gap: the best conditioned eigenvectors
    _, vecs = torch.linalg.eig(pick)
    s = vecs.real
    candidates = [s, s.flip(1)]
    hits = [int(((decrypt_with(k, c) - known_value).abs() < EXACT_TOL).sum()) for k in candidates]
    return candidates[int(hits[1] > hits[0])]


def exact_fraction(decrypted: torch.Tensor, truth: torch.Tensor, *, tol: float = EXACT_TOL) -> float:
    """Fraction of items (first dimension) whose every value is within ``tol`` of the truth."""
    err = (decrypted.to(torch.float64) - truth.to(torch.float64)).abs().reshape(len(truth), -1).amax(1)
    return float((err < tol).double().mean())
