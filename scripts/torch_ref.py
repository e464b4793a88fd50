#!/usr/bin/python3
"""PyTorch reference for the psd benchmark (issue 3, section 8).

Trains the 784-256-128-10 ReLU MLP on Fashion-MNIST with Adam (lr 1e-3),
cross-entropy, per-epoch shuffling from a fixed seed, and evaluates test
accuracy after every epoch.  Reads the IDX gz files itself (no torchvision,
no downloads).  Inputs are scaled by 1/255.

Initialisation: by default Glorot-uniform weights and zero biases, the same
as psd's C implementation; `--init pytorch` uses nn.Linear's defaults
(Kaiming-uniform(a=sqrt(5)) weights, uniform biases) instead.

Threads: OPENBLAS_NUM_THREADS=--blas-threads (default 2) is set before
torch is imported (OpenBLAS reads it once, when it loads; torch's CPU
matrix products are OpenBLAS sgemm calls), and torch.set_num_threads(
--threads, default 1) sets the threads of torch's own ops.  2 x 1 was the
fastest of 1x2, 2x1 and 2x2 (BLAS x torch threads) on the 2-core
benchmark machine (BENCHMARKS.md, section 2), and it is psw's own setting
with one worker: 2 OpenBLAS threads, the other ops on one thread.

OpenBLAS kernel: PyTorch from Debian links the same OpenBLAS as psw, which
picks its kernel once, when it loads, and picks a slow generic one on CPUs
it does not know (issue 11).  Unless OPENBLAS_CORETYPE is set, the
reference asks `psw --blas-kernel` ($PS_BIN/psw, default build/bin/psw next
to this script) which kernel psw runs here and sets OPENBLAS_CORETYPE to it
before torch is imported, so both sides run the same kernel.  The kernel
that runs (openblas_get_corename of the loaded library) and who chose it
are printed, and in the JSON as blas_kernel and blas_kernel_source.

samples_per_sec counts training time only (forward, backward, optimizer
step, batch slicing); evaluation is excluded.  time_to_target_s is wall time
since the start of training (evaluation included) at the end of the first
epoch whose test accuracy reaches --target.

--device cuda[:N] trains on a GPU (data and model on the device; the
per-step loss.item() synchronises, as psw reads its loss every step).
Progress goes to stderr; with --json one JSON object is the last stdout line.
Runs under Debian's /usr/bin/python3 (python3-torch, python3-numpy), or any
python3 with torch and numpy (the GPU machines' own).
"""
import argparse
import ctypes
import gzip
import json
import os
import struct
import subprocess
import sys
import time

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def parse_args():
    """The command line (parsed before torch is imported: see --blas-threads)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Unless OPENBLAS_CORETYPE is set, OpenBLAS runs the kernel `psw "
               "--blas-kernel` names ($PS_BIN/psw, default build/bin/psw), as psw "
               "does; the kernel that runs is printed.")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--target", type=float, default=0.88)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop once S seconds of wall time have passed (checked "
                         "after every batch; the partial epoch is evaluated)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1)")
    ap.add_argument("--blas-threads", type=int, default=2,
                    help="OPENBLAS_NUM_THREADS, set before torch loads (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", choices=("glorot", "pytorch"), default="glorot")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.batch < 1 or a.epochs < 1 or a.threads < 1 or a.blas_threads < 1:
        ap.error("--batch, --epochs, --threads and --blas-threads must be >= 1")
    return ap, a


def psw_blas_kernel():
    """Return what `psw --blas-kernel` prints (a kernel name, or "" when
    OpenBLAS's own choice stands), or None when psw cannot be run."""
    here = os.path.dirname(os.path.abspath(__file__))
    psw = os.path.join(os.environ.get("PS_BIN") or os.path.join(here, "..", "build", "bin"),
                       "psw")
    try:
        return subprocess.run([psw, "--blas-kernel"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# The arguments first: --help and a usage error need neither psw nor
# numpy and torch.
if __name__ == "__main__":
    AP, ARGS = parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.blas_threads)

# The OpenBLAS kernel, set before numpy/torch load OpenBLAS (it reads
# OPENBLAS_CORETYPE only then): the user's choice, or the one psw runs.
if "OPENBLAS_CORETYPE" in os.environ:
    BLAS_SOURCE = "OPENBLAS_CORETYPE=%s" % os.environ["OPENBLAS_CORETYPE"]
else:
    _kernel = psw_blas_kernel()
    if _kernel:
        os.environ["OPENBLAS_CORETYPE"] = _kernel
        BLAS_SOURCE = "chosen by psw --blas-kernel"
    elif _kernel == "":
        BLAS_SOURCE = "OpenBLAS's choice"
    else:
        BLAS_SOURCE = "OpenBLAS's choice; psw --blas-kernel could not run"

import numpy as np  # noqa: E402 (after OPENBLAS_NUM_THREADS is set)
import torch
import torch.nn as nn
import torch.nn.functional as F


def openblas_kernel():
    """Return the kernel the OpenBLAS loaded in this process runs, or None
    when none is loaded: threadpoolctl's answer when it is installed, else
    openblas_get_corename() of the library found in /proc/self/maps."""
    try:
        import threadpoolctl
        for lib in threadpoolctl.threadpool_info():
            if lib.get("internal_api") == "openblas" and lib.get("architecture"):
                return lib["architecture"]
    except Exception:  # not installed, or an older API: read the library
        pass
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({l.split()[-1] for l in f
                            if "openblas" in l.lower() and l.split()[-1].startswith("/")})
    except OSError:
        return None
    for path in paths:
        try:
            fn = ctypes.CDLL(path).openblas_get_corename
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        name = fn()
        return name.decode(errors="replace") if name else None
    return None


def read_idx(path):
    """Read an IDX file (gzip-compressed or plain) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError("%s: too short for an IDX header" % path)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError("%s: not an unsigned-byte IDX file" % path)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    off = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(data) - off != n:
        raise ValueError("%s: expected %d data bytes, got %d"
                         % (path, n, len(data) - off))
    return np.frombuffer(data, dtype=np.uint8, offset=off).reshape(dims)


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError("%s/%s(.gz) not found" % (data_dir, stem))


def load(data_dir, prefix):
    x = read_idx(find(data_dir, prefix + "-images-idx3-ubyte"))
    y = read_idx(find(data_dir, prefix + "-labels-idx1-ubyte"))
    x = torch.from_numpy(x.reshape(x.shape[0], -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(y.astype(np.int64))
    return x, y


class MLP(nn.Module):
    def __init__(self, sizes, init):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        if init == "glorot":
            for l in self.layers:
                nn.init.xavier_uniform_(l.weight)
                nn.init.zeros_(l.bias)

    def forward(self, x):
        for l in self.layers[:-1]:
            x = F.relu(l(x))
        return self.layers[-1](x)


def evaluate(model, x, y, batch=2000):
    model.eval()
    correct = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out = model(x[i:i + batch])
            loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return loss / x.shape[0], correct / x.shape[0]


def main(ap, a):
    try:
        dev = torch.device(a.device)
    except RuntimeError as e:
        ap.error("--device %s: %s" % (a.device, e))
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device %s: torch sees no CUDA device" % a.device)
    if dev.type not in ("cpu", "cuda"):
        ap.error("--device must be cpu or cuda[:N]")
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)

    xtr, ytr = load(a.data, "train")
    xte, yte = load(a.data, "t10k")
    xtr, ytr, xte, yte = (t.to(dev) for t in (xtr, ytr, xte, yte))
    kernel = openblas_kernel()
    log("torch %s, %s, %d threads, OPENBLAS_NUM_THREADS=%s, OpenBLAS kernel %s (%s), train %s, "
        "test %s, batch %d, init %s"
        % (torch.__version__, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           torch.get_num_threads(), os.environ.get("OPENBLAS_NUM_THREADS"),
           kernel or "unknown (no OpenBLAS loaded)", BLAS_SOURCE,
           tuple(xtr.shape), tuple(xte.shape), a.batch, a.init))

    model = MLP([784, 256, 128, 10], a.init).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    n = xtr.shape[0]

    per_epoch = []
    train_time = 0.0
    samples = 0
    time_to_target = None
    best = 0.0
    stopped = False
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(dev)
        xs, ys = xtr[perm], ytr[perm]  # shuffle (counted as training time)
        loss_sum = 0.0
        seen = 0
        for i in range(0, n, a.batch):
            xb, yb = xs[i:i + a.batch], ys[i:i + a.batch]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * xb.shape[0]
            seen += xb.shape[0]
            if a.max_seconds is not None and \
                    time.perf_counter() - t0 > a.max_seconds:
                stopped = True
                break
        sync()
        train_time += time.perf_counter() - te
        samples += seen
        test_loss, acc = evaluate(model, xte, yte)
        elapsed = time.perf_counter() - t0
        best = max(best, acc)
        if time_to_target is None and acc >= a.target:
            time_to_target = elapsed
        per_epoch.append({"epoch": epoch, "train_loss": loss_sum / seen,
                          "test_loss": test_loss, "test_accuracy": acc,
                          "samples": seen, "elapsed_s": round(elapsed, 3)})
        log("epoch %2d  train_loss %.4f  test_loss %.4f  test_acc %.4f  "
            "%.0f samples/s  %.1f s%s"
            % (epoch, loss_sum / seen, test_loss, acc,
               samples / train_time, elapsed,
               "  (partial epoch, --max-seconds)" if stopped else ""))
        if stopped or (a.max_seconds is not None and elapsed > a.max_seconds):
            break
    wall = time.perf_counter() - t0
    sps = samples / train_time if train_time > 0 else 0.0
    log("%.0f training samples/s, final test acc %.4f, best %.4f, "
        "time to %.2f: %s, wall %.1f s"
        % (sps, per_epoch[-1]["test_accuracy"], best, a.target,
           "%.1f s" % time_to_target if time_to_target is not None else "not reached",
           wall))
    if a.json:
        print(json.dumps({
            "framework": "pytorch",
            "torch_version": torch.__version__,
            "device": str(dev),
            "threads": a.threads,
            "blas_kernel": kernel,
            "blas_kernel_source": BLAS_SOURCE,
            "blas_threads": a.blas_threads,
            "init": a.init,
            "batch": a.batch,
            "epochs": len(per_epoch),          # epochs run (last may be partial)
            "epochs_requested": a.epochs,
            "stopped_early": stopped or len(per_epoch) < a.epochs,
            "samples_per_sec": round(sps, 1),
            "test_accuracy": per_epoch[-1]["test_accuracy"],
            "best_test_accuracy": best,
            "target": a.target,
            "time_to_target_s": round(time_to_target, 3)
            if time_to_target is not None else None,
            "wall_s": round(wall, 3),
            "per_epoch": per_epoch,
        }), flush=True)


if __name__ == "__main__":
    main(AP, ARGS)
