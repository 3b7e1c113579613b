"""CKKS-encrypted inference of HE-CLSTM: the client's visit sequence stays encrypted at the server.

Paper: Yue, Ding, Zhao, Zhang, Cao, Tanveer, Jolfaei, Zheng 2019,
"Privacy-preserving time series medical images analysis using a hybrid deep
learning framework" (HE-CLSTM; ACM Transactions on Internet Technology): a
patient's homomorphically encrypted image sequence goes to a server, where
convolution blocks, LSTM cells and a weighted sequence-voting layer classify it
(AUC > 0.94 on colposcopy and breast-biopsy sequences; no runtime was
reported; one client). No code was published; the encoding follows TenSEAL's
encrypted-MNIST tutorial (im2col for the first convolution).

Protocol, with TenSEAL's CKKS (Microsoft SEAL, RNS-CKKS):

1. The client makes a context (N = 8192, coefficient moduli
   ``COEFF_MOD_BIT_SIZES`` = [40, 33×4, 40], scale 2^33; SEAL draws the secret
   key from the OS's entropy, never from a run seed) and sends the server the
   public part: public, relinearisation and Galois keys, no secret key.
2. The client encrypts each visit as an im2col ciphertext (``ts.im2col_encoding``,
   the model's kernel and stride) and sends the T ciphertexts.
3. The server evaluates, on ciphertexts: per visit and channel the
   convolution (``conv2d_im2col``) plus bias, x², and for each gate unit the
   dense layer (average pooling folded into its weights) as a plaintext
   product followed by a slot sum; then the LSTM steps in "scalar layout" (one
   ciphertext per hidden unit and gate: every linear map is a sum of
   plaintext-scalar products, no rotations) with the degree-3 sigmoid and tanh
   of :data:`privmed.models.SIGMOID3` / :data:`~privmed.models.TANH3`, each two
   multiplicative levels (c1·a + (c3·a)·a²); and the weighted vote, the per-visit
   ``out(h_t)`` summed with the softmax weights folded in.
4. The client decrypts the class scores.

Depth and the client-assisted refresh: SEAL has no bootstrapping. The
modulus chain gives ``LEVELS`` = 4 multiplications (212 of the 218 bits SEAL
allows at N = 8192; more levels at this N meant a scale of 2^25-2^26, where the
convolution alone erred by 5e-3-1e-2, measured). The gate inputs use 3 (conv,
x², dense), a degree-3 activation 2, so a step does not fit. Wherever a
ciphertext has fewer levels left than its next operation needs, the server
sends it to the client, which decrypts and re-encrypts it fresh (one *refresh
round*; the ciphertexts of a round travel together). With this network that
happens twice per visit: the gate inputs (4·hidden ciphertexts) before the
activations, the new cell state (hidden ciphertexts) before ``tanh`` — 2·T
rounds per sequence, each counted with its bytes (:class:`InferenceStats`).
What a refresh reveals: those values, in the clear, to the client —
activations of the server's model, i.e. model information (a help to model
extraction), not patient data; the server learns nothing, since it only ever
sees ciphertexts. What it costs: a round trip per round, the ciphertexts each
way, and the client's decryption and encryption time.

Faithful: the pipeline (encrypted sequence -> convolution -> LSTM ->
weighted sequence voting -> encrypted score), evaluated by the server on the
client's ciphertexts, with polynomial activations used in training and
inference alike. Differs: CKKS through TenSEAL rather than the paper's own
HE setting; one convolution layer (im2col works once, as the first layer),
degree-3 sigmoid/tanh, 16-32 px phantom sequences instead of colposcopy and
biopsy images; the client-assisted refresh stands in for the bootstrapping
SEAL lacks; the server's values could be additively masked before a refresh
to hide them from the client (not done here).

Written with TenSEAL's operations rather than its ``mm``: ``mm`` costs one
rotation per input (2 s for 64 inputs at N = 8192 here), while a slot sum costs
log2(N/2) rotations and the recurrent maps, in scalar layout, none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts
import torch

from privmed.errors import PrivmedError
from privmed.models import HECLSTM, SIGMOID3, TANH3

POLY_MODULUS_DEGREE = 8192
# 212 of the 218 bits SEAL allows at N = 8192 for 128-bit security. The scale is 2^33 because at the
# tutorial's 2^26 the convolution's error was 5e-3 and its square's 2e-2 (measured); the first prime of
# 40 bits keeps a value below 2^6 in magnitude decryptable at the last level.
COEFF_MOD_BIT_SIZES = (40, 33, 33, 33, 33, 40)
SCALE_BITS = 33
LEVELS = len(COEFF_MOD_BIT_SIZES) - 2


@dataclass
class InferenceStats:
    """What one encrypted inference cost and revealed."""

    seconds: float = 0.0  # wall time of the whole exchange (client and server)
    server_seconds: float = 0.0
    client_seconds: float = 0.0
    bytes_up: int = 0  # client -> server (ciphertexts, refreshed ciphertexts)
    bytes_down: int = 0  # server -> client (ciphertexts to refresh, the encrypted scores)
    refresh_rounds: int = 0
    refreshed_ciphertexts: int = 0
    refreshed_values: list[str] = field(default_factory=list)  # what the client saw in the clear, per round
    max_levels_used: int = 0

    def add(self, other: InferenceStats) -> None:
        for k in ("seconds", "server_seconds", "client_seconds", "bytes_up", "bytes_down"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.refresh_rounds += other.refresh_rounds
        self.refreshed_ciphertexts += other.refreshed_ciphertexts
        self.max_levels_used = max(self.max_levels_used, other.max_levels_used)


def _levels_left(ct: ts.CKKSVector) -> int:
    return ct.ciphertext()[0].coeff_modulus_size() - 1


class Client:
    """The data owner: holds the secret key, encrypts its sequence, refreshes, decrypts the scores."""

    def __init__(self, *, kernel: int, stride: int, n_threads: int = 1) -> None:
        self.kernel, self.stride = kernel, stride
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=POLY_MODULUS_DEGREE,
            coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
            n_threads=n_threads,
        )
        self.context.global_scale = 2.0**SCALE_BITS
        self.context.generate_galois_keys()
        self.seconds = 0.0

    def public(self) -> bytes:
        """Public, relinearisation and Galois keys: what the server gets (no secret key)."""
        return self.context.serialize(save_secret_key=False)

    def encrypt(self, sequence: np.ndarray) -> tuple[list[bytes], int]:
        """One im2col ciphertext per visit of ``sequence`` [T, H, W]; also the number of windows per visit."""
        start = time.perf_counter()
        out, windows = [], 0
        for image in np.asarray(sequence, dtype=np.float64):
            ct, windows = ts.im2col_encoding(self.context, image.tolist(), self.kernel, self.kernel, self.stride)
            out.append(ct.serialize())
        self.seconds += time.perf_counter() - start
        return out, windows

    def refresh(self, blobs: list[bytes]) -> list[bytes]:
        """Decrypt and re-encrypt (the substitute for bootstrapping); the client sees these values in the clear."""
        start = time.perf_counter()
        values = [ts.ckks_vector_from(self.context, b).decrypt()[0] for b in blobs]
        out = [ts.ckks_vector(self.context, [v]).serialize() for v in values]
        self.seconds += time.perf_counter() - start
        return out

    def decrypt(self, blobs: list[bytes]) -> np.ndarray:
        start = time.perf_counter()
        out = np.array([ts.ckks_vector_from(self.context, b).decrypt()[0] for b in blobs])
        self.seconds += time.perf_counter() - start
        return out


class Server:
    """The model owner: holds HE-CLSTM's weights in the clear and a public context; computes on ciphertexts."""

    def __init__(self, model: HECLSTM, public: bytes, *, image_size: int) -> None:
        self.context = ts.context_from(public)
        if self.context.has_secret_key():
            raise PrivmedError("the server was given a CKKS context with the secret key; give it the public one")
        sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
        self.hidden, k, stride = model.hidden, model.kernel, model.stride
        if image_size < k:
            raise PrivmedError(f"he-clstm's kernel {k} is larger than the image ({image_size} px)")
        side = (image_size - k) // stride + 1
        self.kernels = sd["conv.weight"][:, 0]  # [C, k, k]
        self.conv_bias = sd["conv.bias"]
        channels = len(self.kernels)
        # The pooling is linear: its matrix [grid², side²], read off by pooling each unit window, folds into the
        # dense layer, one weight per (gate unit, channel, window).
        with torch.no_grad():
            pool = model.pool(torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side))
        pool = pool.reshape(side * side, -1).T.numpy()
        wx = sd["gates_x.weight"].reshape(len(sd["gates_x.weight"]), channels, -1)
        self.wx = np.einsum("jcg,gw->jcw", wx, pool)
        self.bx, self.wh = sd["gates_x.bias"], sd["gates_h.weight"]
        self.w_out, self.b_out = sd["out.weight"], sd["out.bias"]
        self.vote = torch.softmax(torch.from_numpy(sd["vote"]), 0).numpy()
        self.windows = side * side
        if k * k * self.windows > POLY_MODULUS_DEGREE // 2:
            raise PrivmedError(
                f"an im2col image of {k * k} x {self.windows} values does not fit one ciphertext's "
                f"{POLY_MODULUS_DEGREE // 2} slots; use a larger stride or smaller images"
            )

    def _load(self, blob: bytes) -> ts.CKKSVector:
        return ts.ckks_vector_from(self.context, blob)

    # ------------------------------------------------------------------ building blocks
    @staticmethod
    def _lin(cts: list[ts.CKKSVector], w: np.ndarray, b: np.ndarray | None) -> list[ts.CKKSVector]:
        """``w @ cts + b`` in scalar layout: sums of plaintext-scalar products (one level)."""
        out = []
        for j, row in enumerate(w):
            acc = None
            for ct, wi in zip(cts, row):
                term = ct * float(wi)
                acc = term if acc is None else acc + term
            out.append(acc + float(b[j]) if b is not None else acc)
        return out

    @staticmethod
    def _poly(a: ts.CKKSVector, coeffs: tuple[float, float, float]) -> ts.CKKSVector:
        """``c0 + c1 a + c3 a³`` in two levels: (c3·a)·a² + c1·a + c0."""
        c0, c1, c3 = coeffs
        return (a * float(c3)) * a.square() + a * float(c1) + float(c0)

    def features(self, visits: list[bytes], windows: int) -> list[list[ts.CKKSVector]]:
        """Per visit, the 4·hidden gate inputs (conv, x², dense): three levels."""
        if windows != self.windows:
            raise PrivmedError(f"the ciphertexts hold {windows} windows per visit, the model expects {self.windows}")
        out = []
        for blob in visits:
            enc = self._load(blob)
            squares = []
            for kern, bias in zip(self.kernels, self.conv_bias):
                y = enc.conv2d_im2col(kern.tolist(), windows) + [float(bias)] * windows
                squares.append(y.square())
            gates = []
            for j in range(len(self.wx)):
                acc = None
                for c, sq in enumerate(squares):
                    term = sq * self.wx[j, c].tolist()
                    acc = term if acc is None else acc + term
                gates.append(acc.sum() + float(self.bx[j]))
            out.append(gates)
        return out


@dataclass
class Setup:
    """A client and a server that share a public context (made once; its size is the one-time cost)."""

    client: Client
    server: Server
    context_bytes: int
    seconds: float


def setup(model: HECLSTM, *, image_size: int) -> Setup:
    """Key generation at the client, the public context sent to the server."""
    start = time.perf_counter()
    client = Client(kernel=model.kernel, stride=model.stride)
    public = client.public()
    server = Server(model, public, image_size=image_size)
    return Setup(client, server, len(public), time.perf_counter() - start)


def infer(pair: Setup, sequence: np.ndarray) -> tuple[np.ndarray, InferenceStats]:
    """Class scores (logits) of one sequence [T, H, W], computed by the server on the client's ciphertexts."""
    client, server = pair.client, pair.server
    stats = InferenceStats()
    start = time.perf_counter()
    client.seconds = 0.0
    blobs, windows = client.encrypt(sequence)
    stats.bytes_up += sum(map(len, blobs))
    fresh = LEVELS

    def track(*cts: ts.CKKSVector) -> None:
        for ct in cts:
            stats.max_levels_used = max(stats.max_levels_used, fresh - _levels_left(ct))

    def need(cts: list[ts.CKKSVector], levels: int, what: str) -> list[ts.CKKSVector]:
        """``cts`` with at least ``levels`` levels left: refresh them at the client (one round) if any lacks them."""
        if all(_levels_left(ct) >= levels for ct in cts):
            return cts
        track(*cts)
        down = [ct.serialize() for ct in cts]
        up = client.refresh(down)
        stats.bytes_down += sum(map(len, down))
        stats.bytes_up += sum(map(len, up))
        stats.refresh_rounds += 1
        stats.refreshed_ciphertexts += len(cts)
        stats.refreshed_values.append(what)
        return [server._load(b) for b in up]

    gx = server.features(blobs, windows)
    H = server.hidden
    h: list[ts.CKKSVector] | None = None
    c: list[ts.CKKSVector] | None = None
    score: list[ts.CKKSVector] | None = None
    for t, x in enumerate(gx):
        if h is None:  # h_0 = c_0 = 0
            a = x
        else:
            a = [xa + ha for xa, ha in zip(x, server._lin(need(h, 1, f"h_{t}"), server.wh, None))]
        a = need(a, 2, f"gate inputs at visit {t + 1}")
        gates = [server._poly(v, TANH3 if 2 * H <= j < 3 * H else SIGMOID3) for j, v in enumerate(a)]
        track(*gates)
        gates = need(gates, 1, f"gates at visit {t + 1}")
        i, f, g, o = (gates[k * H : (k + 1) * H] for k in range(4))
        ig = [ii * gg for ii, gg in zip(i, g)]
        if c is None:
            c = ig
        else:
            c = [ff * cc + x_ for ff, cc, x_ in zip(f, need(c, 1, f"c_{t}"), ig)]
        track(*c)
        c = need(c, 3, f"c_{t + 1}")
        h = [oo * server._poly(cc, TANH3) for oo, cc in zip(o, c)]
        track(*h)
        h = need(h, 1, f"h_{t + 1}")
        w_t = server.w_out * float(server.vote[t])
        s_t = server._lin(h, w_t, server.b_out * float(server.vote[t]))
        score = s_t if score is None else [a_ + b_ for a_, b_ in zip(score, s_t)]
    assert score is not None
    track(*score)
    down = [ct.serialize() for ct in score]
    stats.bytes_down += sum(map(len, down))
    logits = client.decrypt(down)
    stats.seconds = time.perf_counter() - start
    stats.client_seconds = client.seconds
    stats.server_seconds = stats.seconds - client.seconds
    return logits, stats


def evaluate(model: HECLSTM, sequences: np.ndarray, labels: np.ndarray, *, limit: int | None = None) -> dict:
    """Encrypted and plaintext inference of ``model`` on ``sequences`` [N, T, H, W], compared.

    Returns agreement (max |logit difference|, identical decisions), AUROC of
    both paths, per-sequence latency of both (the plaintext one is the
    baseline, measured in the same call), bytes each way, levels used and
    refresh rounds (with what each reveals), and the one-time key setup.
    """
    from sklearn.metrics import roc_auc_score

    if not isinstance(model, HECLSTM):
        raise PrivmedError("encrypted inference needs a he-clstm model (privmed train --model he-clstm ...)")
    if sequences.ndim != 4 or sequences.shape[1] != model.visits:
        raise PrivmedError(
            f"he-clstm takes sequences [N, {model.visits}, H, W]; the data set gives {list(sequences.shape)} "
            f"(use phantom:v2?sequence={model.visits})"
        )
    n = len(sequences) if limit is None else min(int(limit), len(sequences))
    pick = np.linspace(0, len(sequences) - 1, n).round().astype(int)  # spread over the sites' test sets
    x, y = np.asarray(sequences[pick]), np.asarray(labels[pick])
    model = model.eval()
    with torch.no_grad():
        model(torch.from_numpy(x[:1]))  # warm-up: the first call pays torch's one-time costs
    start = time.perf_counter()
    with torch.no_grad():  # one sequence per call, as the server would answer one client (the baseline)
        plain = np.concatenate([model(torch.from_numpy(x[i : i + 1])).double().numpy() for i in range(n)])
    plain_seconds = (time.perf_counter() - start) / max(n, 1)
    pair = setup(model, image_size=x.shape[-1])
    total, enc = InferenceStats(), []
    cpu = time.process_time()
    for seq in x:
        logits, stats = infer(pair, seq)
        enc.append(logits)
        total.add(stats)
    encrypted = np.array(enc)
    cpu = time.process_time() - cpu  # client and server share this process: their CPU time together

    def auroc(z: np.ndarray) -> float | None:
        p = torch.softmax(torch.from_numpy(z), 1)[:, 1].numpy()
        return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None

    return {
        "sequences": n,
        "visits": int(x.shape[1]),
        "image_size": int(x.shape[-1]),
        "max_abs_error": float(np.abs(encrypted - plain).max()),
        "identical_decisions": float(np.mean(encrypted.argmax(1) == plain.argmax(1))),
        "auroc_encrypted": auroc(encrypted),
        "auroc_plaintext": auroc(plain),
        "accuracy_encrypted": float(np.mean(encrypted.argmax(1) == y)),
        "accuracy_plaintext": float(np.mean(plain.argmax(1) == y)),
        "seconds_per_sequence": total.seconds / n,
        "server_seconds_per_sequence": total.server_seconds / n,
        "client_seconds_per_sequence": total.client_seconds / n,
        "cpu_seconds_per_sequence": cpu / n,
        "plaintext_seconds_per_sequence": plain_seconds,
        "bytes_up_per_sequence": total.bytes_up / n,
        "bytes_down_per_sequence": total.bytes_down / n,
        "setup_seconds": pair.seconds,
        "context_bytes": pair.context_bytes,
        "levels": LEVELS,
        "max_levels_used": total.max_levels_used,
        "refresh_rounds_per_sequence": total.refresh_rounds / n,
        "refreshed_ciphertexts_per_sequence": total.refreshed_ciphertexts / n,
        "refreshes_reveal": (
            "to the client, in the clear, each refresh round's values: the gate inputs and the cell state of "
            "every visit (server-model activations; the server sees only ciphertexts)"
        ),
        "parameters": {
            "poly_modulus_degree": POLY_MODULUS_DEGREE,
            "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES),
            "scale_bits": SCALE_BITS,
        },
        "encrypted_logits": encrypted.tolist(),
        "plaintext_logits": plain.tolist(),
    }


def evaluate_run(run_dir, *, limit: int | None = None) -> dict:
    """:func:`evaluate` on a trained run's model (``privmed train --model he-clstm``) and its test sequences."""
    from privmed.audit import load_target
    from privmed.site import load_arrays

    target, _ = load_target(run_dir)
    if target.spec.name != "he-clstm":
        raise PrivmedError(
            f"run {run_dir} trained {target.spec.name!r}; encrypted inference needs --model he-clstm "
            "on phantom:v2?sequence=T"
        )
    if isinstance(target.predictor, list):
        raise PrivmedError(f"run {run_dir} holds an ensemble; encrypted inference takes one model")
    model = target.spec.build()
    load_arrays(model, target.predictor)
    test = target.fed.pooled("test")
    return evaluate(model, test.images, test.labels, limit=limit)


# A bench row encrypts this many of its test sequences (spread over the sites): ~3-20 s each on 2 shared cores.
BENCH_SEQUENCES = 10


def bench_encrypted_inference(spec, predictor, fed, result, *, limit: int = BENCH_SEQUENCES) -> None:
    """Add encrypted inference's figures to a bench row's ``result`` when its model is HE-CLSTM (else nothing).

    Performance: identical decisions and both AUROCs on ``limit`` test
    sequences; communication: bytes per sequence each way and the one-time
    context; runtime: seconds per sequence against the plaintext baseline;
    privacy: what the server sees and what each refresh shows the client.
    """
    from privmed.site import load_arrays

    model = spec.build()
    if not isinstance(model, HECLSTM) or isinstance(predictor, list):
        return
    load_arrays(model, predictor)
    test = fed.pooled("test")
    out = evaluate(model, test.images, test.labels, limit=limit)
    result.extra["encrypted_inference"] = {k: v for k, v in out.items() if not k.endswith("_logits")}
    result.performance["encrypted_inference"] = {
        k: out[k] for k in ("sequences", "identical_decisions", "max_abs_error", "auroc_encrypted", "auroc_plaintext")
    }
    result.communication["note"] = (
        f"CKKS inference: {out['bytes_up_per_sequence'] / 1e6:.1f} MB up / "
        f"{out['bytes_down_per_sequence'] / 1e6:.1f} MB down per sequence, public context "
        f"{out['context_bytes'] / 1e6:.0f} MB once"
    )
    result.runtime["encrypted_inference_seconds_per_sequence"] = out["seconds_per_sequence"]
    result.runtime["plaintext_inference_seconds_per_sequence"] = out["plaintext_seconds_per_sequence"]
    result.privacy["encrypted_inference"] = (
        f"server sees CKKS ciphertexts only; {out['refresh_rounds_per_sequence']:.0f} client refreshes per "
        f"sequence show the client the gate inputs and cell states; {out['max_levels_used']} of "
        f"{out['levels']} levels used"
    )
