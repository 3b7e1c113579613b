"""Model weights as one flat vector or one opaque blob, for encrypting mechanisms.

``flatten``/``unflatten`` turn an ArrayRecord into a float64 vector and back
under a public ``layout`` (names, dtypes, shapes: the architecture is public).
``to_bytes``/``from_bytes`` give a NumPy ``.npz`` blob (no pickle) for
symmetric encryption. ``seal_predictor`` wraps a ConfigRecord holding
ciphertext into an ArrayRecord, so a protocol can hand the harness the
model as the coordinator holds it (encrypted); the mechanism's ``reveal``
turns it back into weights, as a site would (the harness is the sites'
observer, never the coordinator).
"""

from __future__ import annotations

import io
import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privmed.errors import PrivmedError

SEALED_KEY = "privmed-sealed"


def layout_of(arrays: ArrayRecord) -> str:
    return json.dumps([[k, str(a.numpy().dtype), list(a.shape)] for k, a in arrays.items()])


def flatten(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in arrays.values()])


def unflatten(vector: np.ndarray, layout: str) -> ArrayRecord:
    entries = json.loads(layout)
    sizes = [int(np.prod(shape)) for _, _, shape in entries]
    if sum(sizes) != vector.size:
        raise PrivmedError(f"decrypted vector has {vector.size} values, the model layout needs {sum(sizes)}")
    out, i = {}, 0
    for (name, dtype, shape), n in zip(entries, sizes):
        chunk = vector[i : i + n].reshape(shape)
        out[name] = Array(np.rint(chunk).astype(dtype) if np.dtype(dtype).kind in "iu" else chunk.astype(dtype))
        i += n
    return ArrayRecord(out)


def n_values(layout: str) -> int:
    return sum(int(np.prod(shape)) for _, _, shape in json.loads(layout))


def to_bytes(arrays: ArrayRecord) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": a.numpy() for i, a in enumerate(arrays.values())}, keys=np.array(list(arrays.keys())))
    return buf.getvalue()


def from_bytes(blob: bytes) -> ArrayRecord:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        keys = [str(k) for k in z["keys"]]
        return ArrayRecord({k: Array(z[f"a{i}"]) for i, k in enumerate(keys)})


def seal_predictor(record: ConfigRecord) -> ArrayRecord:
    return ArrayRecord({SEALED_KEY: Array(np.frombuffer(record.deflate(), dtype=np.uint8).copy())})


def sealed_record(predictor) -> ConfigRecord | None:
    """The ConfigRecord inside a sealed predictor, or None for plain weights."""
    if isinstance(predictor, ArrayRecord) and list(predictor.keys()) == [SEALED_KEY]:
        return ConfigRecord.inflate(predictor[SEALED_KEY].numpy().tobytes())
    return None


def unsealed(content: RecordDict, open_record) -> RecordDict:
    """A message's content with every sealed model in it opened by ``open_record`` (a site's key: the harness's
    evaluate request, when the coordinator holds only the sealed model)."""
    out = RecordDict(dict(content.items()))
    for key, rec in content.array_records.items():
        sealed = sealed_record(rec)
        if sealed is not None:
            out[key] = open_record(sealed)
    return out
