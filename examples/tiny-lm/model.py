"""The network both train.py and predict.py use: bytes in, next-byte logits out."""

import torch
from torch import nn

CONTEXT = 16  # bytes of context per prediction
VOCAB = 256  # every byte value: any UTF-8 text can be trained on, and weights fit any text


class TinyLM(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(CONTEXT * dim, hidden), nn.GELU(), nn.Linear(hidden, VOCAB)
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(context))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str, on: torch.device) -> TinyLM:
    model = TinyLM().to(on)
    model.load_state_dict(torch.load(path, map_location=on, weights_only=True))
    return model
