"""How much top-1 agreement any 8-bit weight format can keep on bench_cpu.py's random model.

bench_cpu.py measures int8 vs bf16 top-1 agreement on a random Gaussian model, whose logits over 32000 ids
are nearly tied at the top. This script separates the sources of disagreement over the same 1024 random
positions: rounding the activations to bf16 alone (bf16 weights, bf16 vs fp32 activations), int8 group-of-32
weight rounding alone (the int8 weights dequantized to an fp32 checkpoint, exact fp32 products, with and
without the LM head quantized), and tridecode's int8 path (int8 weights, int16 activations).

    python benchmarks/int8_agreement_floor.py [--dir /tmp/tridecode-int8-floor]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import bench_cpu


def _agree(a, b) -> str:
    return f"{100 * float((a.argmax(-1) == b.argmax(-1)).mean()):6.2f}%  mean |logit error| {np.abs(a - b).mean():.4f}"


def main() -> None:
    import tridecode
    from tridecode import ops
    from tridecode.safetensors_io import SafetensorsFile, bf16_to_f32

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/tridecode-int8-floor", help="where the checkpoints are written")
    args = ap.parse_args()
    src = os.path.join(args.dir, "bf16")
    if not os.path.exists(os.path.join(src, "model.safetensors")):
        os.makedirs(src, exist_ok=True)
        bench_cpu.make_checkpoint(src, 1024, 8, 16, 4, 64, 4096, 32000)
    sf = SafetensorsFile(os.path.join(src, "model.safetensors"))
    f32 = {}
    for name in sf.tensors:
        arr, code = sf.array(name)
        f32[name] = bf16_to_f32(arr) if code == 2 else np.asarray(arr, np.float32)

    def dequantized(w):
        q, s = ops.quantize_int8(w)
        return q.astype(np.float32) * np.repeat(s, 32, axis=1)[:, :w.shape[1]]

    from safetensors.numpy import save_file
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        cfg = dict(json.load(f), dtype="float32")
    variants = {"fp32": lambda k: False,
                "int8-weights": lambda k: k.endswith("proj.weight") or k == "lm_head.weight",
                "int8-weights-bf16-head": lambda k: k.endswith("proj.weight")}
    for name, quantized in variants.items():
        d = os.path.join(args.dir, name)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            os.makedirs(d, exist_ok=True)
            save_file({k: dequantized(v) if quantized(k) else v for k, v in f32.items()},
                      os.path.join(d, "model.safetensors"))
            with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f)

    ids = np.random.default_rng(0).integers(3, 32000, 1024).tolist()   # bench_cpu.int8_agreement's positions

    def logits(path, **kw):
        return tridecode.load(path, max_context=1024, **kw).forward(ids)

    exact = logits(os.path.join(args.dir, "fp32"))
    bf16 = logits(src)
    print("top-1 agreement over 1024 random positions of the bench model (hidden 1024, 8 layers, vocab 32000):")
    print(f"  bf16 weights, bf16 vs fp32 activations          {_agree(bf16, logits(src, compute_dtype='float32'))}")
    print(f"  int8 g32 weights alone (fp32 products) vs fp32   {_agree(exact, logits(os.path.join(args.dir, 'int8-weights')))}")
    print(f"  the same, LM head kept                           "
          f"{_agree(exact, logits(os.path.join(args.dir, 'int8-weights-bf16-head')))}")
    print(f"  tridecode int8 vs bf16 (bench_cpu's row)         {_agree(bf16, logits(src, dtype='int8'))}")


if __name__ == "__main__":
    main()
