"""The machine description every benchmark JSON carries."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device=None, libraries: tuple[str, ...] = ("torch", "numpy")) -> dict:
    """Platform, CPU model, cores, Python, library versions and (with `device`) the accelerator."""
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in libraries:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if device is not None:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["device"] = str(device)
        if getattr(device, "type", "") == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info
