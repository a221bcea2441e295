"""Fine-tune TinyLM on a text: the output is a real weights file that predict.py loads via COG_WEIGHTS."""

import random
import tempfile
import time
from typing import Optional

import torch
from cog import Input, Path
from torch import nn

from model import CONTEXT, TinyLM, device, load

SAMPLE = (
    "Cog packages a model as a container image. A model whose cog.yaml names a train function "
    "can be fine-tuned: the training takes inputs, runs on a GPU, and returns weights. "
    "The weights are stored, and predictions load them. Train, then predict with the weights. "
) * 8


def train(
    train_data: Optional[Path] = Input(description="UTF-8 text to fine-tune on (default: a built-in sample)", default=None),
    base_weights: Optional[Path] = Input(description="Weights of an earlier training to continue from", default=None),
    steps: int = Input(description="Optimizer steps", default=300, ge=1, le=100000),
    learning_rate: float = Input(description="Learning rate", default=0.003, ge=0.00001, le=0.1),
    batch_size: int = Input(description="Examples per step", default=64, ge=1, le=4096),
    seed: int = Input(description="Random seed", default=42),
) -> Path:
    on = device()
    print(f"training on {on} ({torch.cuda.get_device_name(0) if on.type == 'cuda' else 'no GPU'})", flush=True)
    torch.manual_seed(seed)
    random.seed(seed)
    text = Path(train_data).read_bytes() if train_data else SAMPLE.encode()
    if len(text) <= CONTEXT:
        raise ValueError(f"train_data has {len(text)} bytes; it needs more than {CONTEXT}")
    data = torch.tensor(list(text), dtype=torch.long, device=on)
    model = load(str(base_weights), on) if base_weights else TinyLM().to(on)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    offsets = torch.arange(CONTEXT, device=on)
    started = time.monotonic()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - CONTEXT, (batch_size,), device=on)
        context = data[starts[:, None] + offsets]
        loss = loss_fn(model(context), data[starts + CONTEXT])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % max(1, steps // 10) == 0 or step == steps:
            print(f"step {step}/{steps} loss {loss.item():.4f}", flush=True)
    elapsed = time.monotonic() - started
    print(f"trained {steps} steps in {elapsed:.2f} s ({steps * batch_size / elapsed:.0f} examples/s on {on})")
    out = Path(tempfile.mkdtemp()) / "weights.pt"
    torch.save(model.state_dict(), out)
    return out
