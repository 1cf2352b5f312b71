"""Our CUDA SSM kernels beside the peers' kernels, in one run, on the same inputs.

PERFORMANCE.md's "Peers measured side by side" rows, bf16 activations as the peers take them:
  conv   causal depthwise conv1d + SiLU, 10240 channels, width 4, b 4 × l 4096, bf16 weight
         and bias: mt.conv1d_forward/backward against causal-conv1d's CUDA causal_conv1d_fn
         (given x as the channel-last view [b, c, l] of our [b, l, c] tensor: the same memory).
  scan   Mamba-1 selective scan, d_inner 8192, n 16, one group, b 4 × l 4096, with D, z, delta
         bias and softplus; f32 A, D, delta bias: mt.selective_scan_forward/backward against
         mamba_ssm's CUDA selective_scan_fn (given [b, d, l] and [b, g, n, l] copies of our
         token-major inputs, made before timing).
  ssd    Mamba-2 SSD, h 128, p 64, n 128, g 8, chunk 128, b 4 × l 4096 and b 1 × l 4096, with
         D, dt bias and softplus; f32 A, D, dt bias: mt.ssd_forward/backward against mamba_ssm's
         Triton mamba_chunk_scan_combined (the same layout as ours).
Ours are called through DLPack on torch tensors with every output allocated once (poisoned
with NaN); the peers through their Python functions as users call them, backward through
torch.autograd.grad (no .grad accumulation), forward under no_grad. Both run with their
defaults (the peers' non-deterministic modes; ours is deterministic).

Before timing, each row's outputs and gradients from ours and from the peer are compared:
max |ours − peer| / max |peer| per tensor, flagged above 2e-2, so that no wrong run is timed
unnoticed. Then forward and forward+backward are timed with CUDA events (median of --reps
after warm-up). Achieved TB/s counts the bytes each op must move at least once, as
bench_cuda_{conv1d,selective_scan,ssd}.py do, against the 4.07 TB/s device copy; the peer
moves at least as many. The Triton peer autotunes on its first calls; its choices are kept
on disk (TRITON_CACHE_AUTOTUNING=1), and scripts/build_peers.sh makes them in advance with
--warm-triton. A peer that is not built or does not import is reported with the reason,
and ours is timed all the same.

The peers come from .peers/ (scripts/build_peers.sh fills and builds it); --peers DIR names
another. Prints a table; --json PATH writes the numbers after every row. Needs PyTorch and
a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")  # before triton is imported

ROOT = Path(__file__).resolve().parents[1]
COPY_CEILING_TBS = 4.07
FLAG_ABOVE = 2e-2
H, P, N, G, Q = 128, 64, 128, 8, 128  # SSD, the 8B Mamba-2 layer
SSD_SHAPES = [(4, 4096), (1, 4096)]
SCAN = dict(b=4, l=4096, d=8192, n=16, g=1)  # the 8B Mamba-1 layer
CONV = dict(b=4, l=4096, c=10240, w=4)  # Mamba-2 8B: d_inner + 2·g·n channels
# PERFORMANCE.md, measured 2026-11-28 (forward, forward+backward ms); for context only.
RECORDED = {"conv": (0.31, 1.19), "scan": (2.42, 12.1), "ssd b4": (1.36, 5.74), "ssd b1": (1.01, 3.70)}
PEER_NAMES = {"conv": "causal_conv1d_fn (causal-conv1d CUDA)", "scan": "selective_scan_fn (mamba_ssm CUDA)",
              "ssd": "mamba_chunk_scan_combined (mamba_ssm Triton)"}


# ---------------------------------------------------------------- the peers
def load_peers(peers: Path, which=("conv", "scan", "ssd")):
    """{kind: the peer's function, or a sentence saying why it is missing}."""
    if not (peers / "mamba").is_dir() or not (peers / "causal-conv1d").is_dir():
        why = (f"{peers} holds no peer source: run scripts/build_peers.sh --populate MAMBA_GIT CONV1D_GIT, "
               f"then scripts/build_peers.sh on the GPU machine")
        return {k: why for k in which}
    for sub in ("build/selective_scan_cuda", "build/causal_conv1d_cuda", "causal-conv1d", "mamba"):
        sys.path.insert(0, str(peers / sub))
    import torch  # noqa: F401  (the extensions link against it)

    out = {}

    def attempt(kind, load):
        try:
            out[kind] = load()
        except Exception as e:  # any failure to build or import is reported, not raised
            out[kind] = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]

    def ssd():
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined

    def scan():
        import selective_scan_cuda  # noqa: F401  (the interface would hide a failed import)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn

    def conv():
        import causal_conv1d_cuda  # noqa: F401
        from causal_conv1d import causal_conv1d_fn
        return causal_conv1d_fn

    for kind in which:
        attempt(kind, {"ssd": ssd, "scan": scan, "conv": conv}[kind])
    return out


# ---------------------------------------------------------------- the rows
class Row:
    """One comparison: ours and (when available) the peer on the same inputs.

    ours_fwd / ours_fwd_bwd run our ops into preallocated outputs; `ours` names those outputs
    in the common layout. peer_fwd / peer_fwd_bwd call the peer; peer_outputs() runs it once
    and returns its outputs under the same names and layout."""

    def __init__(self, key, label, fwd_bytes, fb_bytes):
        self.key, self.label, self.fwd_bytes, self.fb_bytes = key, label, fwd_bytes, fb_bytes
        self.ours_fwd = self.ours_fwd_bwd = self.peer_fwd = self.peer_fwd_bwd = self.peer_outputs = None
        self.ours = {}


def bf16_randn(torch, gen, *shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device="cuda", generator=gen) * scale + shift).to(torch.bfloat16)


def poisoned(torch, like, dtype=None):
    return torch.full_like(like, float("nan"), dtype=dtype)


def conv_row(torch, mt, peer, seed=0):
    b, l, c, w = CONV["b"], CONV["l"], CONV["c"], CONV["w"]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x, dout = bf16_randn(torch, gen, b, l, c), bf16_randn(torch, gen, b, l, c)
    weight, bias = bf16_randn(torch, gen, c, w, scale=0.5), bf16_randn(torch, gen, c)
    n = b * l * c
    row = Row("conv", f"conv1d+SiLU c {c} w {w} b {b} l {l}", 2 * n * 2, 5 * n * 2)  # fwd: x, out; bwd: x, dout, dx
    out, dx = poisoned(torch, x), poisoned(torch, x)
    dw, db = poisoned(torch, weight, torch.float32), poisoned(torch, bias, torch.float32)
    m = {k: mt.from_dlpack(v) for k, v in dict(x=x, dout=dout, w=weight, b=bias, out=out, dx=dx, dw=dw, db=db).items()}

    def fwd():
        mt.conv1d_forward(m["x"], m["w"], m["b"], silu=True, out=m["out"])

    def fwd_bwd():
        fwd()
        mt.conv1d_backward(m["dout"], m["x"], m["w"], m["b"], silu=True, dx=m["dx"], dweight=m["dw"], dbias=m["db"])

    row.ours_fwd, row.ours_fwd_bwd = fwd, fwd_bwd
    row.ours = dict(out=out, dx=dx, dweight=dw, dbias=db)
    if callable(peer):
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
        dout_cl = dout.transpose(1, 2)  # [b, c, l], channel-last: the same memory

        def call():
            return peer(leaves[0].transpose(1, 2), leaves[1], leaves[2], activation="silu")

        def peer_fwd():
            with torch.no_grad():
                return call()

        def peer_fwd_bwd():
            y = call()
            return y, torch.autograd.grad(y, leaves, dout_cl)

        def outputs():
            y, g = peer_fwd_bwd()
            return dict(out=y.transpose(1, 2), dx=g[0], dweight=g[1], dbias=g[2])

        row.peer_fwd, row.peer_fwd_bwd, row.peer_outputs = peer_fwd, peer_fwd_bwd, outputs
    return row


def scan_row(torch, mt, peer, seed=0):
    b, l, d, n, g = SCAN["b"], SCAN["l"], SCAN["d"], SCAN["n"], SCAN["g"]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    u, z, dy = (bf16_randn(torch, gen, b, l, d) for _ in range(3))
    delta = bf16_randn(torch, gen, b, l, d, scale=0.5, shift=-2.0)  # softplus of it: Δ around 0.1
    B, C = bf16_randn(torch, gen, b, l, g, n), bf16_randn(torch, gen, b, l, g, n)
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1)  # S4D-real init
    D = torch.rand(d, device="cuda", generator=gen) + 0.5
    bias = torch.randn(d, device="cuda", generator=gen) * 0.1
    tok, nbc = b * l * d, b * l * g * n
    # fwd reads u, delta, z, B, C and writes y; bwd reads u, delta, z, dy, B, C, writes du, ddelta, dz, dB, dC.
    row = Row("scan", f"selective scan d {d} n {n} b {b} l {l}", (4 * tok + 2 * nbc) * 2, (11 * tok + 6 * nbc) * 2)
    y = poisoned(torch, u)
    grads = dict(du=poisoned(torch, u), ddelta=poisoned(torch, u), dz=poisoned(torch, u), dB=poisoned(torch, B),
                 dC=poisoned(torch, C), dA=poisoned(torch, A), dD=poisoned(torch, D), ddelta_bias=poisoned(torch, bias))
    ins = [mt.from_dlpack(t) for t in (u, delta, A, B, C, D, z, bias)]
    my, mdy = mt.from_dlpack(y), mt.from_dlpack(dy)
    mg = {k: mt.from_dlpack(v) for k, v in grads.items()}

    def fwd():
        mt.selective_scan_forward(*ins, delta_softplus=True, out=my)

    def fwd_bwd():
        fwd()
        mt.selective_scan_backward(mdy, *ins, delta_softplus=True, **mg)

    row.ours_fwd, row.ours_fwd_bwd = fwd, fwd_bwd
    row.ours = dict(y=y, **grads)
    if callable(peer):
        def chan(t):  # [b, l, d] -> [b, d, l]
            return t.transpose(1, 2).contiguous()

        def state_major(t):  # [b, l, g, n] -> [b, g, n, l]
            return t.permute(0, 2, 3, 1).contiguous()

        leaves = [t.requires_grad_() for t in (chan(u), chan(delta), A.clone(), state_major(B), state_major(C),
                                                D.clone(), chan(z), bias.clone())]
        dy_p = chan(dy)

        def call():
            uu, dd, aa, bb, cc, DD, zz, bi = leaves
            return peer(uu, dd, aa, bb, cc, DD, zz, bi, delta_softplus=True)

        def peer_fwd():
            with torch.no_grad():
                return call()

        def peer_fwd_bwd():
            out = call()
            return out, torch.autograd.grad(out, leaves, dy_p)

        def outputs():
            out, gr = peer_fwd_bwd()
            tl, tb = (lambda t: t.transpose(1, 2)), (lambda t: t.permute(0, 3, 1, 2))
            return dict(y=tl(out), du=tl(gr[0]), ddelta=tl(gr[1]), dz=tl(gr[6]), dB=tb(gr[3]), dC=tb(gr[4]),
                        dA=gr[2], dD=gr[5], ddelta_bias=gr[7])

        row.peer_fwd, row.peer_fwd_bwd, row.peer_outputs = peer_fwd, peer_fwd_bwd, outputs
    return row


def ssd_inputs(torch, b, l, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return dict(
        x=bf16_randn(torch, gen, b, l, H, P),
        dt=(torch.rand(b, l, H, device="cuda", generator=gen) * 3 - 4).to(torch.bfloat16),
        A=-(1 + 15 * torch.rand(H, device="cuda", generator=gen)),
        B=bf16_randn(torch, gen, b, l, G, N),
        C=bf16_randn(torch, gen, b, l, G, N),
        D=torch.rand(H, device="cuda", generator=gen) + 0.5,
        dt_bias=-torch.rand(H, device="cuda", generator=gen),
    ), bf16_randn(torch, gen, b, l, H, P)


def ssd_peer_calls(torch, peer, inp, dy):
    """(forward, forward+backward, outputs) of mamba_chunk_scan_combined on inp."""
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias"]
    leaves = {k: inp[k].detach().requires_grad_() for k in names}

    def call():
        t = leaves
        return peer(t["x"], t["dt"], t["A"], t["B"], t["C"], Q, D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)

    def peer_fwd():
        with torch.no_grad():
            return call()

    def peer_fwd_bwd():
        y = call()
        return y, torch.autograd.grad(y, [leaves[k] for k in names], dy)

    def outputs():
        y, g = peer_fwd_bwd()
        return dict(y=y, **{"d" + k: v for k, v in zip(names, g)})

    return peer_fwd, peer_fwd_bwd, outputs


def ssd_row(torch, mt, peer, b, l, seed=0):
    inp, dy = ssd_inputs(torch, b, l, seed)
    x, bc, dt = b * l * H * P * 2, b * l * G * N * 2, b * l * H * 2
    fwd_bytes = 2 * x + 2 * bc + dt  # read x, B, C, dt; write y
    row = Row(f"ssd b{b}", f"SSD h {H} p {P} n {N} g {G} Q {Q} b {b} l {l}", fwd_bytes,
              fwd_bytes + 3 * x + 4 * bc + 2 * dt)  # bwd: read dy, x, B, C, dt; write dx, dB, dC, ddt
    y, fs = poisoned(torch, inp["x"]), torch.empty(b, H, P, N, device="cuda", dtype=torch.float32)
    grads = {"d" + k: poisoned(torch, v) for k, v in inp.items()}
    m = {k: mt.from_dlpack(v) for k, v in inp.items()}
    my, mfs, mdy = mt.from_dlpack(y), mt.from_dlpack(fs), mt.from_dlpack(dy)
    mg = {k: mt.from_dlpack(v) for k, v in grads.items()}
    opts = dict(chunk_size=Q, dt_softplus=True)

    def fwd():
        mt.ssd_forward(**m, **opts, out=my, final_state=mfs)

    def fwd_bwd():
        fwd()
        mt.ssd_backward(mdy, **m, **opts, **mg)

    row.ours_fwd, row.ours_fwd_bwd = fwd, fwd_bwd
    row.ours = dict(y=y, **grads)
    if callable(peer):
        row.peer_fwd, row.peer_fwd_bwd, row.peer_outputs = ssd_peer_calls(torch, peer, inp, dy)
    return row


# ---------------------------------------------------------------- checking and timing
def agreement(torch, ours, peer):
    """{name: max |ours − peer| / max |peer|} (NaN when either is not finite)."""
    out = {}
    for name, a in ours.items():
        p = peer[name].float()
        a = a.float()
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(p).all())):
            out[name] = float("nan")
            continue
        scale = p.abs().max().item()
        out[name] = (a - p).abs().max().item() / (scale if scale > 0 else 1.0)
    return out


def run_row(torch, median_ms, row, reps, warmup):
    res = {"row": row.key, "label": row.label, "fwd_bytes": row.fwd_bytes, "fwd_bwd_bytes": row.fb_bytes}
    torch.cuda.synchronize()
    row.ours_fwd_bwd()
    torch.cuda.synchronize()
    finite = {k: bool(torch.isfinite(v).all()) for k, v in row.ours.items()}
    res["ours_finite"] = all(finite.values())
    if not res["ours_finite"]:
        print(f"  ours left non-finite values in: {', '.join(k for k, f in finite.items() if not f)}")
    peer_ok = row.peer_outputs is not None
    if peer_ok:
        try:  # a peer that fails at run time leaves ours to be timed
            agree = agreement(torch, row.ours, row.peer_outputs())
            worst = max(agree.values(), key=lambda v: float("inf") if v != v else v)
            res["agreement"], res["worst_rel_diff"] = agree, worst
            res["flagged"] = not (worst <= FLAG_ABOVE)
            print("  ours vs peer, max|diff|/max|peer|: " + ", ".join(f"{k} {v:.2e}" for k, v in agree.items())
                  + (f"  FLAG: ABOVE {FLAG_ABOVE:g}" if res["flagged"] else f"  (all within {FLAG_ABOVE:g})"))
        except Exception as e:
            peer_ok, res["peer_error"] = False, f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"  the peer failed: {res['peer_error']}")
    for name, fn in (("fwd", row.ours_fwd), ("fwd_bwd", row.ours_fwd_bwd)):
        res[f"ours_{name}_ms"] = median_ms(fn, torch, reps, warmup)
    if peer_ok:
        try:
            for name, fn in (("fwd", row.peer_fwd), ("fwd_bwd", row.peer_fwd_bwd)):
                res[f"peer_{name}_ms"] = median_ms(fn, torch, reps, warmup)
        except Exception as e:
            res["peer_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"  the peer failed while timed: {res['peer_error']}")
    for name, nbytes in (("fwd", row.fwd_bytes), ("fwd_bwd", row.fb_bytes)):
        for who in ("ours", "peer"):
            ms = res.get(f"{who}_{name}_ms")
            if ms:
                res[f"{who}_{name}_tb_per_s"] = nbytes / (ms * 1e-3) / 1e12
        if res.get(f"peer_{name}_ms"):
            res[f"ours_over_peer_{name}"] = res[f"ours_{name}_ms"] / res[f"peer_{name}_ms"]
    return res


def print_table(results, peers):
    def num(v, spec):
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    print()
    print(f"{'row':<7} {'pass':<8} {'ours ms':>8} {'peer ms':>8} {'ours/peer':>9} {'ours TB/s':>9} "
          f"{'of 4.07':>7} {'peer TB/s':>9} {'agree':>9} {'recorded peer ms':>16}")
    for r in results:
        if r.get("error"):
            print(f"{r['row']:<7} {'':<8} ours failed: {r['error']}")
            continue
        agree = "-" if "worst_rel_diff" not in r else f"{r['worst_rel_diff']:.1e}" + ("!" if r["flagged"] else "")
        for i, name in enumerate(("fwd", "fwd_bwd")):
            tbs = r.get(f"ours_{name}_tb_per_s")
            share = None if tbs is None else 100 * tbs / COPY_CEILING_TBS
            print(f"{r['row']:<7} {name.replace('_', '+'):<8} {num(r.get(f'ours_{name}_ms'), '8.3f')} "
                  f"{num(r.get(f'peer_{name}_ms'), '8.3f')} {num(r.get(f'ours_over_peer_{name}'), '9.2f')} "
                  f"{num(tbs, '9.2f')} {num(share, '6.1f')}% {num(r.get(f'peer_{name}_tb_per_s'), '9.2f')} "
                  f"{agree:>9} {num(RECORDED.get(r['row'], (None, None))[i], '16.2f')}")
    print("agree: the largest max|ours - peer| / max|peer| over the row's outputs and gradients "
          f"('!' above {FLAG_ABOVE:g}); recorded: PERFORMANCE.md, 2026-11-28")
    for kind, p in peers.items():
        if not callable(p):
            print(f"peer {kind} missing: {p}")


# ---------------------------------------------------------------- main
def versions(torch):
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    commit_file = ROOT / "COMMIT"
    if commit_file.is_file():
        info["commit"] = commit_file.read_text().strip()
        return info
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def warm_triton(peers_dir: Path) -> int:
    """Compile and autotune the Triton peer at the SSD shapes (forward and backward), so that
    the timed run finds its kernels and choices on disk. Needs no mambatron."""
    import torch
    peer = load_peers(peers_dir, ("ssd",))["ssd"]
    if not callable(peer):
        print(f"warm-triton: the SSD peer is missing: {peer}")
        return 1
    for b, l in SSD_SHAPES:
        t0 = time.time()
        inp, dy = ssd_inputs(torch, b, l, seed=0)
        fwd, fwd_bwd, _ = ssd_peer_calls(torch, peer, inp, dy)
        for _ in range(2):
            fwd()
            fwd_bwd()
        torch.cuda.synchronize()
        print(f"warm-triton: b {b} l {l} forward and backward ready in {time.time() - t0:.0f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the numbers here (rewritten after every row)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", nargs="+", choices=["conv", "scan", "ssd"], default=["conv", "scan", "ssd"])
    ap.add_argument("--peers", type=Path, default=ROOT / ".peers", help="the peers' folder (default .peers/)")
    ap.add_argument("--warm-triton", action="store_true", help="only compile and autotune the Triton SSD peer")
    args = ap.parse_args()
    if args.warm_triton:
        return warm_triton(args.peers)

    import mambatron as mt
    from gpu_timing import median_ms, require_torch_cuda

    torch = require_torch_cuda("bench_peers_ssm")
    if torch is None:
        return 1
    peers = load_peers(args.peers, tuple(dict.fromkeys(args.only)))
    sources = (args.peers / "SOURCES").read_text().split("\n") if (args.peers / "SOURCES").is_file() else []
    report = {"benchmark": "peers_ssm", "date": time.strftime("%Y-%m-%d"), **versions(torch),
              "copy_ceiling_tb_per_s": COPY_CEILING_TBS, "flag_above": FLAG_ABOVE, "peer_sources": [s for s in sources if s],
              "peers": {k: (PEER_NAMES[k] if callable(v) else f"missing: {v}") for k, v in peers.items()},
              "recorded_peer_ms": RECORDED, "rows": []}
    print(f"peers side by side on {report['device']}, torch {report['torch']}, triton {report['triton']}, "
          f"commit {report['commit']}; reps {args.reps} after {args.warmup} warm-up calls")
    for kind, p in peers.items():
        print(f"  {kind}: {PEER_NAMES[kind] if callable(p) else 'MISSING, ours only: ' + p}")
    builders = []
    for kind in args.only:
        if kind == "conv":
            builders.append(("conv", lambda: conv_row(torch, mt, peers["conv"])))
        elif kind == "scan":
            builders.append(("scan", lambda: scan_row(torch, mt, peers["scan"])))
        else:
            builders += [(f"ssd b{b}", lambda b=b, l=l: ssd_row(torch, mt, peers["ssd"], b, l)) for b, l in SSD_SHAPES]
    ok = True
    for key, build in builders:
        t0 = time.time()
        print(f"{key}:", flush=True)
        try:
            res = run_row(torch, median_ms, build(), args.reps, args.warmup)
        except Exception as e:  # one row's failure leaves the others to run
            res = {"row": key, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            print(f"  FAILED: {res['error']}")
        ok &= not res.get("error") and res.get("ours_finite", False) and not res.get("flagged", False)
        res["seconds"] = round(time.time() - t0, 1)
        report["rows"].append(res)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report["rows"], peers)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
