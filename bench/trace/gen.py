#!/usr/bin/env python3
"""A synthetic cache trace: one request a line, `key size` (size in bytes).

Popular objects follow a Zipf law over --objects keys; a share of the requests
(--one-hit) goes to keys never requested before or after (the one-hit wonders a
web or CDN trace is full of). Object sizes are log-normal (median --median,
sigma --sigma) clamped to [--min, --max]; an object keeps its size.

Deterministic for a given --seed (Python's Mersenne Twister, stdlib only):

    python3 bench/trace/gen.py --alpha 0.8 -o /tmp/zipf-0.8.trace
    cargo run --release -p larder-core --example hit_ratio -- /tmp/zipf-0.8.trace
"""

import argparse
import bisect
import itertools
import math
import random
import sys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2_000_000, help="requests in the trace")
    p.add_argument("--objects", type=int, default=500_000, help="keys the Zipf part draws from")
    p.add_argument("--alpha", type=float, default=0.8, help="Zipf exponent")
    p.add_argument("--one-hit", type=float, default=0.3, help="share of requests to keys seen once")
    p.add_argument("--median", type=float, default=16 * 1024, help="median object size, bytes")
    p.add_argument("--sigma", type=float, default=1.5, help="log-normal sigma of sizes")
    p.add_argument("--min", type=int, default=100, help="smallest object, bytes")
    p.add_argument("--max", type=int, default=16 << 20, help="largest object, bytes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", default="-", help="file to write (- for stdout)")
    a = p.parse_args()
    if a.requests < 0 or a.objects < 1 or not 0 <= a.one_hit <= 1 or a.alpha < 0:
        p.error("need requests >= 0, objects >= 1, 0 <= one-hit <= 1, alpha >= 0")

    rng = random.Random(a.seed)
    mu = math.log(a.median)

    def size() -> int:
        return min(a.max, max(a.min, int(rng.lognormvariate(mu, a.sigma))))

    # Rank r (1-based) is drawn with probability proportional to r^-alpha. Ranks are
    # shuffled onto key names so that a key's name says nothing of its popularity.
    cdf = list(itertools.accumulate(r ** -a.alpha for r in range(1, a.objects + 1)))
    total = cdf[-1]
    names = list(range(a.objects))
    rng.shuffle(names)
    sizes = [size() for _ in range(a.objects)]

    out = sys.stdout if a.output == "-" else open(a.output, "w", encoding="ascii")
    rand, bis, once = rng.random, bisect.bisect_left, 0
    batch = []
    for _ in range(a.requests):
        if rand() < a.one_hit:
            batch.append(f"once/{once} {size()}\n")
            once += 1
        else:
            r = min(bis(cdf, rand() * total), a.objects - 1)
            batch.append(f"obj/{names[r]} {sizes[r]}\n")
        if len(batch) >= 65536:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
