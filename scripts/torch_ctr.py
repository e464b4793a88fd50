#!/usr/bin/python3
"""PyTorch reference for the "sparse" benchmark (scripts/bench_sparse).

Trains the click-through model of `psctl model ctr` on a Criteo TSV log
(scripts/gen_ctr writes one): 26 categorical fields, each an
nn.EmbeddingBag (sparse gradients; one id per field and sample) of
dimension --dim over the ids that field has in the training and test
files; the 13 integer features as sign(x) log(1 + |x|), missing = 0
(worker/psw_ctr.h's transform); [dense, embeddings] -> dense layers with
ReLU (--layers) -> one logit, sigmoid cross-entropy.  Adagrad on both
sides (torch.optim.Adagrad takes the tables' sparse gradients), lr --lr,
batch --batch, one pass in file order, then test logloss and AUC.

samples_per_sec counts training only (batch slicing, forward, backward,
optimizer steps); reading the files and evaluation are excluded.  Threads:
torch.set_num_threads(--threads).  One JSON object is the last stdout
line.  Runs under Debian's /usr/bin/python3 (python3-torch, numpy).
"""
import argparse
import json
import math
import sys
import time


def parse_args():
    """The command line, parsed before numpy and torch load (so that --help
    and a usage error need neither)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--layers", default="64,32")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()

import numpy as np  # noqa: E402 (after the arguments)
import torch  # noqa: E402

NDENSE, NFIELDS = 13, 26


def load(path, vocab):
    """Labels, dense features and per-field indices (new ids get new rows)."""
    ys, xs, ids = [], [], []
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 1 + NDENSE + NFIELDS:
                continue
            ys.append(float(p[0]))
            d = []
            for s in p[1:1 + NDENSE]:
                v = int(s) if s else 0
                d.append(math.copysign(math.log1p(abs(v)), v))
            xs.append(d)
            row = []
            for fi, s in enumerate(p[1 + NDENSE:]):
                m = vocab[fi]
                row.append(m.setdefault(s, len(m)))  # '' (missing) is an id too
            ids.append(row)
    return (torch.tensor(ys), torch.tensor(xs, dtype=torch.float32),
            torch.tensor(ids, dtype=torch.int64))


class Ctr(torch.nn.Module):
    def __init__(self, sizes, dim, layers):
        super().__init__()
        self.emb = torch.nn.ModuleList(
            torch.nn.EmbeddingBag(n, dim, mode="sum", sparse=True) for n in sizes)
        for e in self.emb:
            torch.nn.init.uniform_(e.weight, -0.05, 0.05)
        widths = [NDENSE + NFIELDS * dim] + layers + [1]
        mods = []
        for i in range(len(widths) - 1):
            lin = torch.nn.Linear(widths[i], widths[i + 1])
            torch.nn.init.xavier_uniform_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
            mods.append(lin)
            if i + 2 < len(widths):
                mods.append(torch.nn.ReLU())
        self.mlp = torch.nn.Sequential(*mods)

    def forward(self, x, ids):
        n = ids.shape[0]
        off = torch.arange(n)
        embs = [e(ids[:, f], off) for f, e in enumerate(self.emb)]
        return self.mlp(torch.cat([x] + embs, 1)).squeeze(1)


def auc(p, y):
    order = np.argsort(p, kind="mergesort")
    ps, ys = p[order], y[order]
    ranks = np.empty(len(p))
    i = 0
    while i < len(p):  # ties share their mean rank
        j = i
        while j < len(p) and ps[j] == ps[i]:
            j += 1
        ranks[i:j] = (i + 1 + j) / 2
        i = j
    npos = ys.sum()
    nneg = len(ys) - npos
    return float((ranks[ys == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def main(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    vocab = [dict() for _ in range(NFIELDS)]
    ytr, xtr, itr = load(a.train, vocab)
    yte, xte, ite = load(a.test, vocab)
    model = Ctr([len(m) for m in vocab], a.dim, [int(w) for w in a.layers.split(",") if w])
    sparse = torch.optim.Adagrad(list(model.emb.parameters()), lr=a.lr)
    dense = torch.optim.Adagrad(list(model.mlp.parameters()), lr=a.lr)
    lossf = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    n = len(ytr)
    for i in range(0, n, a.batch):
        loss = lossf(model(xtr[i:i + a.batch], itr[i:i + a.batch]), ytr[i:i + a.batch])
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        sparse.step()
        dense.step()
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        p = torch.sigmoid(model(xte, ite)).numpy().astype(np.float64)
    y = yte.numpy()
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    ll = float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean())
    rows = sum(len(m) for m in vocab)
    print(json.dumps({"samples": n, "samples_per_sec": round(n / train_s, 1),
                      "test_logloss": round(ll, 6), "test_auc": round(auc(p, y), 4),
                      "rows": rows, "threads": a.threads, "dim": a.dim, "batch": a.batch}))


if __name__ == "__main__":
    main(ARGS)
