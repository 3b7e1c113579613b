"""HE-CLSTM under CKKS: encrypted vs plaintext inference on the phantom's follow-up sequences.

Trains ``he-clstm`` centrally on ``phantom:v2?sequence=T`` (plain torch, the
same polynomial activations the encrypted path evaluates), then runs
:func:`privmed.privacy.he_inference.evaluate` on ``--sequences`` held-out test
sequences and prints agreement (max |logit error|, identical decisions),
AUROC of both paths, latency per sequence against the plaintext-inference
baseline measured in the same run (the ratio), bytes each way, levels used and
refresh rounds, beside TenSEAL's encrypted-MNIST reference (Benaissa et al.
2021 tutorial: ≈ 2 s per image, 97.48 % encrypted vs 97.77 % plain).

Run: PYTHONPATH=. python benchmarks/he_inference.py [--visits 4] [--image-size 16] [--sequences 20] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from privmed.data.registry import load_federation
from privmed.models import build_model
from privmed.privacy.he_inference import evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--visits", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--sequences", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    fed = load_federation(
        f"phantom:v2?sequence={a.visits}", seed=a.seed, sites=4, split="natural", scanners=4, image_size=a.image_size
    )
    train, test = fed.pooled("train"), fed.pooled("test")
    model = build_model("he-clstm", in_channels=a.visits, n_classes=2, seed=a.seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(a.seed)
    for _ in range(a.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), 32):
            idx = perm[b : b + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    out = evaluate(model, test.images, test.labels, limit=a.sequences)
    ratio = out["seconds_per_sequence"] / out["plaintext_seconds_per_sequence"]
    print(f"HE-CLSTM, {out['sequences']} test sequences of {out['visits']} visits at {out['image_size']} px")
    print(f"identical decisions      {out['identical_decisions']:.3f}")
    print(f"max |logit error|        {out['max_abs_error']:.2e}")
    print(f"AUROC encrypted / plain  {out['auroc_encrypted']:.3f} / {out['auroc_plaintext']:.3f}")
    print(f"accuracy enc / plain     {out['accuracy_encrypted']:.3f} / {out['accuracy_plaintext']:.3f}")
    print(
        f"seconds per sequence     {out['seconds_per_sequence']:.2f} encrypted "
        f"(server {out['server_seconds_per_sequence']:.2f}, client {out['client_seconds_per_sequence']:.2f}; "
        f"CPU {out['cpu_seconds_per_sequence']:.2f}) vs "
        f"{out['plaintext_seconds_per_sequence'] * 1e3:.2f} ms plaintext: ratio {ratio:,.0f}x"
    )
    print(
        f"bytes per sequence       up {out['bytes_up_per_sequence'] / 1e6:.1f} MB, "
        f"down {out['bytes_down_per_sequence'] / 1e6:.1f} MB; public context once {out['context_bytes'] / 1e6:.0f} MB "
        f"(key setup {out['setup_seconds']:.1f} s)"
    )
    print(
        f"levels                   {out['max_levels_used']} of {out['levels']} used; "
        f"refresh rounds {out['refresh_rounds_per_sequence']:.0f} per sequence "
        f"({out['refreshed_ciphertexts_per_sequence']:.0f} ciphertexts)"
    )
    print(f"refreshes reveal         {out['refreshes_reveal']}")
    print("TenSEAL encrypted MNIST  ≈ 2 s per image, accuracy 0.9748 encrypted vs 0.9777 plain (tutorial 4)")
    keep = {k: v for k, v in out.items() if not k.endswith("_logits")}
    print(json.dumps({**keep, "latency_ratio": ratio, "train_labels": np.bincount(train.labels).tolist()}))


if __name__ == "__main__":
    main()
