"""SAE training throughput and collection overhead, measured side by side in one run (CPU).

1. Training steps (encode, TopK, decode, loss, backward, Adam) at the SDXL-Turbo setting of SAEPaint
   (d=1280, n=5120, k=10): our sparse decode (gather the k decoder rows) vs a dense decode
   ([batch x n] codes times W_dec). Each variant runs in its own process so its peak memory (max RSS) is its own.
2. `sae collect` (hooks + fp16 shards written) vs plain generation of the same prompts on tiny-random-sd.

Usage: python benchmarks/sae_train_throughput.py [--batch-size 4096] [--steps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch


def train_steps(variant: str, batch_size: int, steps: int, d: int = 1280, n: int = 5120, k: int = 10) -> dict:
    from sae.model import SAE, SAEConfig
    from sae.train import project_decoder_gradient

    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=d, n_features=n, k=k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch_size, d)

    def step() -> None:
        values, indices = sae.encode_topk(x)
        if variant == "sparse":
            x_hat = sae.decode_sparse(values, indices)
        else:
            x_hat = sae.decode(torch.zeros(batch_size, n).scatter(-1, indices, values))
        loss = (x_hat - x).pow(2).sum(-1).mean()
        loss.backward()
        project_decoder_gradient(sae)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"variant": variant, "vectors_per_s": batch_size * steps / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def collection_overhead(n_prompts: int = 32, batch_size: int = 8, steps: int = 4, repeats: int = 3) -> dict:
    from sae.capture import CollectOptions, collect
    from sae.pipelines import load_diffusers_pipeline

    pipe = load_diffusers_pipeline("tiny-random-sd", device="cpu")
    words = "red green blue yellow circle square triangle star grass sand sky water".split()
    prompts = [f"a {words[i % 4]} {words[4 + i % 4]} on {words[8 + (i // 4) % 4]}" for i in range(n_prompts)]
    blocks = ["mid_block.attentions.0", "up_blocks.1.attentions.0"]
    plain_times, latent_times, collect_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = os.path.join(tmp, "prompts.txt")
        with open(prompts_file, "w") as handle:
            handle.write("\n".join(prompts))
        for repeat in range(repeats + 1):
            start = time.perf_counter()
            for first in range(0, n_prompts, batch_size):
                pipe(prompt=prompts[first:first + batch_size], num_inference_steps=steps, guidance_scale=0.0,
                     generator=[torch.Generator().manual_seed(i) for i in range(first, first + batch_size)])
            plain = time.perf_counter() - start
            start = time.perf_counter()
            for first in range(0, n_prompts, batch_size):
                pipe(prompt=prompts[first:first + batch_size], num_inference_steps=steps, guidance_scale=0.0,
                     generator=[torch.Generator().manual_seed(i) for i in range(first, first + batch_size)],
                     output_type="latent")
            latent = time.perf_counter() - start
            start = time.perf_counter()
            collect(CollectOptions("tiny-random-sd", blocks, prompts_file, os.path.join(tmp, f"acts{repeat}"),
                                   steps=steps, guidance=0.0, batch_size=batch_size, progress=False), pipe=pipe)
            collected = time.perf_counter() - start
            if repeat:  # the first round warms up
                plain_times.append(plain)
                latent_times.append(latent)
                collect_times.append(collected)
    plain, collected = sorted(plain_times)[repeats // 2], sorted(collect_times)[repeats // 2]
    latent = sorted(latent_times)[repeats // 2]
    return {"prompts": n_prompts, "blocks": blocks, "plain_s": plain, "latent_s": latent, "collect_s": collected,
            "ratio": collected / plain, "ratio_latent": collected / latent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variant", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(train_steps(args.variant, args.batch_size, args.steps)))
        return
    print(f"device: cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}")
    print(f"training step, d=1280 n=5120 k=10, batch {args.batch_size}, {args.steps} timed steps per variant:")
    sparse, dense = run_variant("sparse", args), run_variant("dense", args)
    for result in (sparse, dense):
        print(f"  {result['variant']:>6} decode: {result['vectors_per_s']:10.0f} vectors/s, "
              f"peak memory {result['peak_rss_mib']:.0f} MiB")
    print(f"  sparse / dense throughput: {sparse['vectors_per_s'] / dense['vectors_per_s']:.2f}x (target >= 1.5x); "
          f"peak memory dense / sparse: {dense['peak_rss_mib'] / sparse['peak_rss_mib']:.2f}x")
    overhead = collection_overhead()
    print(f"collection on tiny-random-sd, {overhead['prompts']} prompts, 4 steps, blocks {', '.join(overhead['blocks'])}:")
    print(f"  plain generation {overhead['plain_s']:.2f} s, sae collect {overhead['collect_s']:.2f} s, "
          f"ratio {overhead['ratio']:.2f}x (target <= 1.15x)")
    print(f"  (collect stops before the VAE decode; against plain generation that also stops there, "
          f"{overhead['latent_s']:.2f} s: {overhead['ratio_latent']:.2f}x, the cost of the hooks and the shard writes)")


if __name__ == "__main__":
    main()
