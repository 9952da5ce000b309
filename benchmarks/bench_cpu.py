"""CPU backend vs transformers-on-torch and llama.cpp, in one run, on the same random mid-size checkpoint.

Measures the latency of a 1-token decode forward and of a 32-token chunk forward over a fixed cached context
(the cache is cropped back after every timed call), median of many runs after a warm-up, and prints each
row's memory-bandwidth floor: the weight bytes one forward reads (embedding excluded, scales included)
divided by the machine's read rate, sampled beside that row's timed runs (a shared host's rate moves from
minute to minute). The rows the targets compare (and the huge-page A/B) run in turn for --rounds rounds.

Rows: tridecode bf16 (bf16 activations, the default; weights in huge pages where the kernel offers them),
bf16 with the weights mapped from the file in 4 KiB pages (hugepages=False), bf16 with compute_dtype="float32", int8
(load(..., dtype="int8")) and fp32 weights; torch fp32 and bf16; llama.cpp bf16 / f16 / q8_0 when
--llama-cpp DIR names a llama.cpp tree with build/bin/llama-bench and llama-quantize (its gguf-py writes the
GGUF file from the same weights as a llama-architecture model: the same shapes and bytes; default RoPE and
no q/k permutation, which changes no timing). Then: int8 top-1 agreement with the bf16 model over random
tokens, huge pages against 4 KiB pages in alternating decodes, and a generate at 1 thread and at the default
count, on free cores and with a busy process per core.

    python benchmarks/bench_cpu.py [--hidden 1024 --layers 8 --vocab 32000 --threads 2 --runs 15]
        [--llama-cpp DIR] [--skip-contention]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def make_checkpoint(path, hidden, layers, heads, kv_heads, head_dim, inter, vocab, seed=0):
    from tridecode.safetensors_io import to_bf16_bits

    rng = np.random.default_rng(seed)

    def bf16(shape, std):
        return to_bf16_bits(rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    t = {"model.embed_tokens.weight": bf16((vocab, hidden), 0.02),
         "model.norm.weight": to_bf16_bits(np.ones(hidden, np.float32)),
         "lm_head.weight": bf16((vocab, hidden), hidden ** -0.5)}
    for i in range(layers):
        p = f"model.layers.{i}."
        ones = t["model.norm.weight"]
        t[p + "input_layernorm.weight"] = ones
        t[p + "post_attention_layernorm.weight"] = ones
        t[p + "self_attn.q_proj.weight"] = bf16((heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.k_proj.weight"] = bf16((kv_heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.v_proj.weight"] = bf16((kv_heads * head_dim, hidden), hidden ** -0.5)
        t[p + "self_attn.o_proj.weight"] = bf16((hidden, heads * head_dim), (heads * head_dim) ** -0.5)
        t[p + "mlp.gate_proj.weight"] = bf16((inter, hidden), hidden ** -0.5)
        t[p + "mlp.up_proj.weight"] = bf16((inter, hidden), hidden ** -0.5)
        t[p + "mlp.down_proj.weight"] = bf16((hidden, inter), inter ** -0.5)
    # safetensors.numpy has no bf16: write the file by hand (header + raw little-endian bits).
    header, offset, blobs = {}, 0, []
    for name in sorted(t):
        raw = np.ascontiguousarray(t[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t[name].shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for b in blobs:
            f.write(b)
    config = {
        "architectures": ["Ministral3ForCausalLM"], "model_type": "ministral3", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "intermediate_size": inter, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "max_position_embeddings": 262144, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0,
                            "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    weight_elems = sum(a.size for n, a in t.items() if n != "model.embed_tokens.weight")
    return weight_elems


def median_ms(fn, runs, warmup=2, rate=None, burst=3):
    """Median ms of fn over runs after warmup runs. With rate (a ReadRate), a read-rate sample is taken before
    every burst of timed runs (back to back, as a generate runs its forwards) and (ms, median bytes/s of those
    samples) is returned: on a shared host the read rate moves from minute to minute, so a row's floor comes
    from the same seconds as its timings."""
    for _ in range(warmup):
        fn()
    times, rates = [], []
    for i in range(runs):
        if rate is not None and i % burst == 0:
            rates.append(rate.sample())
            fn()   # the first forward after a sample wakes the threads and refills the caches: not timed
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    if rate is None:
        return statistics.median(times)
    return statistics.median(times), statistics.median(rates)


_READ_RATE_CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
x = torch.ones(int(float(sys.argv[1]) * (1 << 30)) // 4, dtype=torch.float32)
x.sum()
for line in sys.stdin:
    t0 = time.perf_counter()
    x.sum()
    print(x.numel() * 4 / (time.perf_counter() - t0), flush=True)
"""


class ReadRate:
    """Bytes/s of a multi-threaded streaming read (torch's sum of a 1 GiB buffer, far larger than the caches),
    one sample at a time, in a child process whose OpenMP threads sleep as soon as the sum ends
    (OMP_WAIT_POLICY=PASSIVE): threads spinning after a sample would take the cores from the timed run that
    follows. Every sample is kept, so the run can also report the best rate it saw."""

    def __init__(self, threads, gib=1.0):
        import subprocess

        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("GOMP_SPINCOUNT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _READ_RATE_CHILD, str(gib), str(threads)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.seen = []

    def sample(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        r = float(self.proc.stdout.readline())
        self.seen.append(r)
        return r

    def median(self, n=5) -> float:
        return statistics.median(self.sample() for _ in range(n))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def forward_bytes(model) -> int:
    """Bytes of weights one forward reads: everything but the embedding table (only its rows are read)."""
    return sum(a.nbytes for name, t in model._weights.items() if name != "embed"
               for a in t if isinstance(a, np.ndarray))


def bench_tridecode(path, context, runs, rate, **load_kw):
    import tridecode

    m = tridecode.load(path, max_context=context + 64, **load_kw)
    prompt = list(range(3, 3 + context))
    m.forward(prompt, mode="causal", logits="last")

    def decode():
        m.forward([5], mode="causal", logits="last")
        m.crop(context)

    def chunk():
        m.forward(list(range(10, 42)), mode="causal", logits="all")
        m.crop(context)

    dec, bw = median_ms(decode, runs, rate=rate)
    return dec, median_ms(chunk, max(3, runs // 3)), forward_bytes(m), bw


def bench_torch(path, torch_dtype, context, runs, rate):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa").eval()
    prompt = torch.arange(3, 3 + context).reshape(1, -1)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True)
        one = torch.tensor([[5]])
        block = torch.arange(10, 42).reshape(1, -1)

        def decode():
            model(input_ids=one, cache=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)

        def chunk():
            model(input_ids=block, cache=cache, use_cache=True)
            cache.crop(-32)

        d, bw = median_ms(decode, runs, rate=rate)
        c = median_ms(chunk, max(3, runs // 3))
    return d, c, bw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--context", type=int, default=64, help="cached tokens before each timed forward")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-torch-bf16", action="store_true")
    ap.add_argument("--llama-cpp", default=None, help="a llama.cpp tree with build/bin/llama-bench, llama-quantize")
    ap.add_argument("--skip-contention", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the rows run in turn (default 3)")
    args = ap.parse_args(argv)

    import torch
    import tridecode

    torch.set_num_threads(args.threads)
    tridecode.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        elems = make_checkpoint(d, args.hidden, args.layers, args.heads, args.kv_heads, args.head_dim,
                                args.intermediate, args.vocab)
        rate = ReadRate(args.threads)
        # The rows a target compares (tridecode bf16 and int8, llama.cpp) and the 4 KiB-page row run in turn,
        # args.rounds times, each row the median of its rounds: a shared host's read rate moves between rows.
        peers = {"tridecode bf16": lambda: bench_tridecode(d, args.context, args.runs, rate),
                 "tridecode bf16, 4 KiB pages": lambda: bench_tridecode(d, args.context, args.runs, rate,
                                                                         hugepages=False),
                 "tridecode int8": lambda: bench_tridecode(d, args.context, args.runs, rate, dtype="int8")}
        if args.llama_cpp:
            for kind, (f, nbytes) in prepare_llama_cpp(args.llama_cpp, d, args, elems).items():
                peers[f"llama.cpp {kind}"] = functools.partial(bench_llama_cpp, args.llama_cpp, f, nbytes, args, rate)
        samples = {name: [] for name in peers}
        for _ in range(args.rounds):
            for name, fn in peers.items():
                samples[name].append(fn())
        rows = {}   # name: (decode ms, chunk ms, bytes a forward reads, read rate measured beside the decodes)
        rows["tridecode bf16"] = median_row(samples["tridecode bf16"])
        rows["tridecode bf16, 4 KiB pages"] = median_row(samples["tridecode bf16, 4 KiB pages"])
        rows["tridecode bf16, fp32 compute"] = bench_tridecode(d, args.context, args.runs, rate,
                                                               compute_dtype="float32")
        rows["tridecode int8"] = median_row(samples["tridecode int8"])
        rows["tridecode fp32 weights"] = bench_tridecode(d, args.context, args.runs, rate, dtype="float32")
        dec, chk, bw = bench_torch(d, torch.float32, args.context, args.runs, rate)
        rows["torch fp32"] = (dec, chk, elems * 4, bw)
        if not args.skip_torch_bf16:
            dec, chk, bw = bench_torch(d, torch.bfloat16, args.context, args.runs, rate)
            rows["torch bf16"] = (dec, chk, elems * 2, bw)
        rows.update({name: median_row(v) for name, v in samples.items() if name.startswith("llama.cpp")})
        agree = int8_agreement(d)
        shipped = shipped_int8()
        pages = bench_pages(d, args.context, rate)
        contention = None if args.skip_contention else bench_contention(d, args)
        best = max(rate.seen)
        rate.close()

    paths = tridecode._C.cpu_paths()
    print(f"model: hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads}x{args.head_dim}, "
          f"MLP {args.intermediate}, vocab {args.vocab}; {elems / 1e6:.1f}M weights read per forward; "
          f"context {args.context}; threads {args.threads}")
    print(f"cpu: {cpu_name()}; tridecode kernels {paths['kernels']} (bf16: {paths['bf16']}, int8: {paths['int8']})")
    print(f"read rate (multi-threaded sum of 1 GiB): {min(rate.seen) / 1e9:.1f}-{best / 1e9:.1f} GB/s over the run, "
          f"sampled beside every timed decode")
    print(f"{'':30s} {'decode ms':>10s} {'GB/s':>5s} {'floor ms':>9s} {'x floor':>8s} {'x best':>7s} "
          f"{'32-chunk ms':>12s} {'x floor':>8s} {'chunk/decode':>13s}")
    for name, (dec, chk, nbytes, bw) in rows.items():
        floor = nbytes / bw * 1e3
        print(f"{name:30s} {dec:10.2f} {bw / 1e9:5.1f} {floor:9.2f} {dec / floor:8.2f} {dec / (nbytes / best * 1e3):7.2f} "
              f"{chk:12.2f} {chk / floor:8.2f} {chk / dec:13.2f}")
    print("(GB/s: the median read rate sampled before each timed decode of the row (before and after llama-bench "
          "for llama.cpp); floor = bytes one forward reads / that rate; x best = decode / (bytes / the best rate of "
          f"the whole run); llama.cpp: llama-bench tg16 and pp32 at depth {args.context})")
    print(f"({', '.join(samples)} ran in turn, {args.rounds} rounds; each is the median of its rounds)")
    print(f"int8 vs bf16 top-1 agreement over {agree[1]} positions: {agree[0]:.4f}; mean |logit error| "
          f"{agree[2]:.4f} (logit std {agree[3]:.3f})")
    print(f"shipped model, int8 vs fp32 over {shipped[1]} positions of held-out text and source: top-1 agreement "
          f"{shipped[0]:.4f}; next-token loss fp32 {shipped[2]:.4f}, int8 {shipped[3]:.4f} "
          f"(+{shipped[3] - shipped[2]:.4f} nats)")
    if pages is None:
        print("huge pages: the kernel offers no transparent huge pages here (every row is in 4 KiB pages)")
    else:
        hp, small, ratio, n, bw = pages
        print(f"huge pages vs 4 KiB pages, bf16 decode alternating between two loads of the checkpoint, {n} pairs: "
              f"{hp:.2f} vs {small:.2f} ms (floor {rows['tridecode bf16'][2] / bw * 1e3:.2f} ms at {bw / 1e9:.1f} "
              f"GB/s), 4 KiB / huge per pair {ratio:.3f}")
    if contention:
        print("generate (AR, 16 tokens after 64), ms per token:")
        for label, (one, many) in contention.items():
            print(f"  {label:34s} 1 thread {one:8.2f}   {args.threads} threads {many:8.2f}   ratio {many / one:5.2f}")
    print(targets(rows, agree, contention, shipped))
    return rows


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def has_amx() -> bool:
    try:
        return " amx_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def targets(rows, agree, contention, shipped) -> str:
    """The issue's targets, each with its numbers (MET / MISSED; '-' where its peer row is absent)."""
    out = ["targets:"]

    def line(ok, text):
        out.append(f"  {'-' if ok is None else 'MET' if ok else 'MISSED':7s} {text}")

    def floor(name):
        return rows[name][2] / rows[name][3] * 1e3

    b = rows["tridecode bf16"]
    line(b[0] <= 1.15 * floor("tridecode bf16"), f"bf16 decode <= 1.15x floor: {b[0] / floor('tridecode bf16'):.2f}x")
    for peer in ("llama.cpp bf16", "llama.cpp f16"):
        line(None if peer not in rows else b[0] < rows[peer][0], f"bf16 decode faster than {peer}: "
             + (f"{b[0]:.2f} vs {rows[peer][0]:.2f} ms" if peer in rows else "not measured"))
    t = rows.get("torch bf16")
    line(None if t is None else b[1] <= t[1], "32-chunk no slower than torch bf16: "
         + (f"{b[1]:.2f} vs {t[1]:.2f} ms" if t else "not measured"))
    if has_amx():
        line(b[1] <= 2.5 * b[0], f"(AMX) 32-chunk <= 2.5x decode: {b[1] / b[0]:.2f}x")
    i = rows["tridecode int8"]
    line(i[0] <= 1.2 * floor("tridecode int8"), f"int8 decode <= 1.2x its floor: {i[0] / floor('tridecode int8'):.2f}x")
    q = rows.get("llama.cpp q8_0")
    line(None if q is None else i[0] <= q[0], "int8 decode no slower than llama.cpp q8_0: "
         + (f"{i[0]:.2f} vs {q[0]:.2f} ms" if q else "not measured"))
    line(agree[0] >= 0.99, f"int8 top-1 agreement >= 99%, bench model: {100 * agree[0]:.2f}%")
    line(shipped[0] >= 0.99, f"int8 top-1 agreement >= 99%, shipped model: {100 * shipped[0]:.2f}%")
    if contention:
        one, many = contention["busy cores"]
        line(many <= 1.1 * one, f"busy cores: default threads <= 1.1x one thread: {many / one:.2f}x")
        one, many = contention["free cores"]
        line(many < one, f"free cores: default threads faster than one: {one / many:.2f}x speed-up")
    return "\n".join(out)


def int8_agreement(path, positions=1024, seed=0):
    """(top-1 agreement, positions, mean |logit diff|, logit std) of int8 vs bf16 over random tokens."""
    import tridecode

    ref = tridecode.load(path, max_context=positions)
    q = tridecode.load(path, dtype="int8", max_context=positions)
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, ref.config.vocab_size, positions).tolist()
    a, b = ref.forward(ids), q.forward(ids)
    return float((a.argmax(-1) == b.argmax(-1)).mean()), positions, float(np.abs(a - b).mean()), float(a.std())


_CONTENTION_CHILD = r"""
import statistics, sys, time
import tridecode
path, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = tridecode.load(path, max_context=256)
prompt = list(range(3, 67))
def per_token(n):
    tridecode.set_num_threads(n)
    t0 = time.perf_counter()
    m.generate(prompt, max_new_tokens=16, eos_token_id=[])
    return (time.perf_counter() - t0) * 1e3 / 16
per_token(1); per_token(threads)
one, many = [], []
for _ in range(rounds):          # interleaved, so a noisy neighbour hits both alike
    one.append(per_token(1))
    many.append(per_token(threads))
print(statistics.median(one), statistics.median(many))
"""


def shipped_int8(window=512):
    """On the shipped model, over its held-out text then this package's generate/*.py (4096 positions as the
    test takes them): int8 vs fp32 top-1 agreement, and the held-out next-token loss of each."""
    import glob

    import tridecode

    path = tridecode.default_model_path()
    fp, q = tridecode.load(path, lora=None), tridecode.load(path, dtype="int8", lora=None)
    files = [os.path.join(path, "heldout.txt"),
             *sorted(glob.glob(os.path.join(os.path.dirname(tridecode.__file__), "generate", "*.py")))]
    ids = [t for f in files for t in fp.encode(open(f, encoding="utf-8").read())][:4096]
    agree = total = 0
    nll = {"fp32": 0.0, "int8": 0.0}
    for start in range(0, len(ids) - window + 1, window):
        chunk = ids[start:start + window]
        fp.reset()
        q.reset()
        a, b = fp.forward(chunk), q.forward(chunk)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(chunk)
        for name, lg in (("fp32", a), ("int8", b)):
            lg = lg[:-1].astype(np.float64)
            lg -= lg.max(axis=1, keepdims=True)
            logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
            nll[name] -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
    n = total - total // window
    return agree / total, total, nll["fp32"] / n, nll["int8"] / n


def bench_contention(path, args, rounds=5):
    """ms per generated token (AR, 16 tokens after 64) at 1 thread and at args.threads, alternating, in a fresh
    process (no torch threads beside it): on free cores, then with one spinning process per core."""
    import subprocess

    def run():
        r = subprocess.run([sys.executable, "-c", _CONTENTION_CHILD, path, str(args.threads), str(rounds)],
                           check=True, capture_output=True, text=True)
        one, many = r.stdout.split()[-2:]
        return float(one), float(many)

    out = {"free cores": run()}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        out["busy cores"] = run()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return out


def prepare_llama_cpp(tree, path, args, elems):
    """The checkpoint written as a bf16 GGUF, quantized to f16 and q8_0 by llama-quantize: {kind: (file, bytes
    a forward reads)}."""
    import subprocess

    sys.path.insert(0, os.path.join(tree, "gguf-py"))
    import gguf

    src = os.path.join(path, "model-bf16.gguf")
    write_gguf(gguf, path, src, args)
    files = {"bf16": (src, elems * 2), "f16": (os.path.join(path, "model-f16.gguf"), elems * 2),
             "q8_0": (os.path.join(path, "model-q8_0.gguf"), elems * 34 // 32)}
    for kind in ("f16", "q8_0"):
        subprocess.run([os.path.join(tree, "build", "bin", "llama-quantize"), src, files[kind][0], kind.upper()],
                       check=True, capture_output=True)
    return files


def bench_llama_cpp(tree, gguf_file, nbytes, args, rate):
    """One llama.cpp row timed by llama-bench (decode = 1000 / tg16 tokens/s, chunk = 32 tokens / pp32
    tokens/s), with the read rate sampled before and after it."""
    import subprocess

    before = rate.median(3)
    r = subprocess.run([os.path.join(tree, "build", "bin", "llama-bench"), "-m", gguf_file, "-p", "32", "-n", "16",
                        "-d", str(args.context), "-t", str(args.threads), "-r", str(max(3, args.runs // 3)),
                        "-o", "json"], check=True, capture_output=True, text=True)
    res = json.loads(r.stdout)
    tg = next(e["avg_ts"] for e in res if e["n_gen"] > 0)
    pp = next(e["avg_ts"] for e in res if e["n_prompt"] > 0)
    return 1e3 / tg, 32 / pp * 1e3, nbytes, statistics.median([before, rate.median(3)])


def bench_pages(path, context, rate, pairs=100):
    """The bf16 decode with the weights in huge pages and mapped from the file in 4 KiB pages, one load of
    each, their decodes alternating (the order flips every pair) so both see the same host: (huge ms, 4 KiB
    ms, median per-pair ratio 4 KiB / huge, pairs, read rate sampled before and after)."""
    import tridecode
    from tridecode.loader import hugepages_available

    if not hugepages_available():
        return None
    models = [tridecode.load(path, max_context=context + 64, hugepages=h) for h in (True, False)]
    prompt = list(range(3, 3 + context))
    for m in models:
        m.forward(prompt, mode="causal", logits="last")
    rates = [rate.sample()]
    times = ([], [])
    for i in range(pairs + 5):
        for k in ((0, 1) if i % 2 else (1, 0)):
            t0 = time.perf_counter()
            models[k].forward([5], mode="causal", logits="last")
            times[k].append((time.perf_counter() - t0) * 1e3)
            models[k].crop(context)
    rates.append(rate.sample())
    hp, small = times[0][5:], times[1][5:]
    return (statistics.median(hp), statistics.median(small), statistics.median(b / a for a, b in zip(hp, small)),
            pairs, statistics.median(rates))


def median_row(samples):
    """(decode ms, chunk ms, bytes, read rate) rows of several rounds -> their medians (bytes are the same)."""
    return (statistics.median(r[0] for r in samples), statistics.median(r[1] for r in samples), samples[0][2],
            statistics.median(r[3] for r in samples))


def write_gguf(gguf, path, out, args):
    """The safetensors checkpoint at path as a llama-architecture bf16 GGUF (same tensors, same bytes)."""
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(os.path.join(path, "model.safetensors"), dtype=np.uint8, mode="r")

    def tensor(name):
        info = header[name]
        a, b = info["data_offsets"]
        return np.asarray(raw[base + a:base + b]).view(np.uint16).reshape(info["shape"])

    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(4096)
    w.add_embedding_length(args.hidden)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(args.intermediate)
    w.add_head_count(args.heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_key_length(args.head_dim)
    w.add_value_length(args.head_dim)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(args.vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>".encode() for i in range(args.vocab)])
    w.add_token_scores([0.0] * args.vocab)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (args.vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    bf16 = gguf.GGMLQuantizationType.BF16
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(args.layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        a = tensor(hf)
        if a.ndim == 1:   # norms as fp32, as llama.cpp's converter writes them
            w.add_tensor(gg, (a.astype(np.uint32) << 16).view(np.float32))
        else:
            w.add_tensor(gg, a, raw_dtype=bf16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
