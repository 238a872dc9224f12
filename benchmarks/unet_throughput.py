"""Images per second of the shapes GPU config's UNet, forward (sampling) and forward+backward
(training), under bf16 autocast, in the memory layouts and modes worth comparing.

    python benchmarks/unet_throughput.py --batch_sizes '[512,4096]' --compile true
"""

from __future__ import annotations

import json
import time

import torch
from jsonargparse import CLI
from profile_step import timed  # benchmarks/ is on the path when run as a script

from kaleido.nn.unet import UNet


def main(batch_sizes: list[int] = [512, 4096], repeats: int = 10, compile: bool = True, cond_length: int = 48) -> dict:
    torch.backends.cudnn.benchmark = True
    unet = UNet(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(1, 2), num_heads=4, cond_dim=256).cuda()
    variants: dict[str, tuple[torch.nn.Module, torch.memory_format]] = {
        "eager": (unet, torch.contiguous_format),
        "eager_channels_last": (unet, torch.channels_last),
    }
    if compile:
        variants["compiled"] = (torch.compile(unet, dynamic=False), torch.contiguous_format)
    results: dict = {"device": torch.cuda.get_device_name()}
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        t = torch.randint(0, 1000, (batch,), device="cuda")
        cond = torch.randn(batch, cond_length, 256, device="cuda")
        mask = torch.ones(batch, cond_length, dtype=torch.bool, device="cuda")
        for name, (net, layout) in variants.items():
            net_layout = unet.to(memory_format=layout)
            xl = x.contiguous(memory_format=layout)

            def forward() -> None:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    net(xl, t, cond, mask)

            def train_step() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    net(xl, t, cond, mask).float().square().mean().backward()

            start = time.perf_counter()
            fwd = timed(forward, repeats, warmup=2)
            step = timed(train_step, repeats, warmup=2) if batch <= 1024 else float("nan")
            results[f"{name}_b{batch}"] = {
                "forward_img_per_s": round(batch / fwd), "train_img_per_s": round(batch / step) if step == step else None,
                "wall_s_incl_warmup": round(time.perf_counter() - start, 1),
            }
            print(name, batch, results[f"{name}_b{batch}"], flush=True)
            del net_layout
        unet.to(memory_format=torch.contiguous_format)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    CLI(main, as_positional=False)
