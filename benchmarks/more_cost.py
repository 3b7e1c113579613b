"""What MORE costs and what it protects: training poly-cnn on ciphertexts against the same network on plaintext.

Per seed (phantom cohort, initial weights and mini-batch order from the
seed; the key and r's secret): the pooled training set is encrypted, then
the same network with the same initial weights and the same batches is
trained for ``--epochs`` epochs on ciphertexts (privmed's ring ops) and on
plaintext (torch's SGD), epoch by epoch, interleaved, so both see the same
machine load. Prints per seed: test accuracy and AUROC of both (the MORE
model decrypted by the key holder), the largest difference between the two
models' weights, seconds per epoch and their ratio; then mean ± 95 % CI over
seeds and the paired accuracy difference; the bytes ratio of ciphertext to
float32 plaintext; and the key-recovery attack (pairs needed, fraction of
images decrypted exactly, ciphertext only, null: a random key). Goals from
issue 14: time ratio ≤ 10× (Vizitiu et al. report ~30×); bytes 4×.

    PYTHONPATH=. python benchmarks/more_cost.py [--seeds 3] [--epochs 30] [--image-size 32] [--dataset phantom]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from privmed.attacks import more_key_recovery as kr
from privmed.bench.stats import mean_ci, paired_p
from privmed.config import DataConfig
from privmed.engine.session import build_federation
from privmed.models import PolyCNN
from privmed.privacy import more
from privmed.privacy import more_net as mn
from privmed.tasks import classification_metrics

LR, MOMENTUM, BATCH = 0.05, 0.9, 32  # protocol more's defaults (MoreOptions, TrainSettings.batch_size)


def metrics(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        proba = torch.softmax(model(x), 1).numpy()
    return classification_metrics(y, proba)


def one_seed(seed: int, args) -> dict[str, float]:
    fed = build_federation(DataConfig(dataset=args.dataset, image_size=args.image_size), seed)
    train, test = fed.pooled("train"), fed.pooled("test")
    x, y = torch.from_numpy(train.images), mn.onehot(train.labels, fed.n_classes)
    key = more.keygen()  # secret
    t0 = time.perf_counter()
    cx, cy = more.encrypt(key, x), more.encrypt(key, y)
    enc_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    plain = PolyCNN(fed.image_shape[0], fed.n_classes)
    layers = mn.ring_layers(plain)
    params = mn.encode_params(plain.state_dict())
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    opt = mn.plain_optimizer(plain, lr=LR, momentum=MOMENTUM)
    t_ct = t_pt = 0.0
    for ep in range(args.epochs):
        t0 = time.perf_counter()
        mn.ring_sgd_epoch(
            layers,
            params,
            velocity,
            cx,
            cy,
            lr=LR,
            momentum=MOMENTUM,
            batch_size=BATCH,
            rng=np.random.default_rng([seed, ep]),
        )
        t_ct += time.perf_counter() - t0
        t0 = time.perf_counter()
        mn.plain_sgd_epoch(plain, opt, x, y, batch_size=BATCH, rng=np.random.default_rng([seed, ep]))
        t_pt += time.perf_counter() - t0
    decrypted = PolyCNN(fed.image_shape[0], fed.n_classes)
    decrypted.load_state_dict({k: more.decrypt(key, v.detach()).float() for k, v in params.items()})
    weight_diff = max(float((decrypted.state_dict()[k] - v).abs().max()) for k, v in plain.state_dict().items())
    xt = torch.from_numpy(test.images)
    m_ct, m_pt = metrics(decrypted, xt, test.labels), metrics(plain, xt, test.labels)
    # the attack on what the server saw: one known pixel, then the ciphertexts alone, then a random key (null)
    one = kr.known_plaintext_key(x.reshape(-1)[:1], cx.reshape(-1, 2, 2)[:1])
    return {
        "acc_more": m_ct["accuracy"],
        "acc_plain": m_pt["accuracy"],
        "auroc_more": m_ct["auroc"],
        "auroc_plain": m_pt["auroc"],
        "weight_diff": weight_diff,
        "s_epoch_more": t_ct / args.epochs,
        "s_epoch_plain": t_pt / args.epochs,
        "ratio": t_ct / t_pt,
        "encrypt_s": enc_s,
        "bytes_ratio": (cx.nbytes + cy.nbytes) / (x.to(torch.float32).nbytes + y.to(torch.float32).nbytes),
        "kp_exact": kr.exact_fraction(more.decrypt_with(one, cx), x),
        "co_exact": kr.exact_fraction(more.decrypt_with(kr.ciphertext_only_key(cx), cx), x),
        "null_exact": kr.exact_fraction(more.decrypt_with(more.keygen().s, cx), x),
        "n_train": len(x),
        "n_test": len(xt),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--dataset", default="phantom")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"MORE vs plaintext, poly-cnn, SGD lr {LR} momentum {MOMENTUM} batch {BATCH}, {args.epochs} epochs, "
        f"{args.dataset} {args.image_size}px, {args.seeds} seeds"
    )
    print("seed  acc MORE  acc plain  AUROC MORE  AUROC plain  max|dw|   s/epoch MORE  s/epoch plain  ratio")
    rows = []
    for seed in range(args.seeds):
        r = one_seed(seed, args)
        rows.append(r)
        print(
            f"{seed:<4}  {r['acc_more']:.3f}     {r['acc_plain']:.3f}      {r['auroc_more']:.3f}       "
            f"{r['auroc_plain']:.3f}        {r['weight_diff']:.1e}  {r['s_epoch_more']:.3f}         "
            f"{r['s_epoch_plain']:.3f}          {r['ratio']:.1f}x"
        )

    def ci(key: str) -> str:
        m, h = mean_ci([r[key] for r in rows])
        return f"{m:.3f} ± {h:.3f}"

    print(f"train {rows[0]['n_train']} images, test {rows[0]['n_test']} (seed 0); mean ± 95 % CI over seeds:")
    print(f"  accuracy  MORE {ci('acc_more')}   plaintext {ci('acc_plain')}")
    print(f"  AUROC     MORE {ci('auroc_more')}   plaintext {ci('auroc_plain')}")
    diff = [r["acc_more"] - r["acc_plain"] for r in rows]
    m, h = mean_ci(diff)
    p = paired_p([r["acc_more"] for r in rows], [r["acc_plain"] for r in rows]) if len(rows) > 1 else float("nan")
    print(f"  accuracy difference MORE - plaintext (paired): {m:+.4f} ± {h:.4f} (p = {p:.2f})")
    print(f"  training time ratio MORE / plaintext: {ci('ratio')}x (goal <= 10x; Vizitiu et al. ~30x)")
    print(f"  bytes ratio ciphertext / float32 plaintext: {ci('bytes_ratio')}x; encryption {ci('encrypt_s')} s")
    print(
        f"  key recovery: 1 known pixel -> {ci('kp_exact')} of images decrypted exactly; ciphertexts only -> "
        f"{ci('co_exact')}; null (random key) -> {ci('null_exact')}"
    )


if __name__ == "__main__":
    main()
