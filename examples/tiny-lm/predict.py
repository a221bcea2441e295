"""Generate text with TinyLM, using the weights of a training (COG_WEIGHTS)."""

from typing import Optional

import torch
from cog import BasePredictor, Input

from model import CONTEXT, TinyLM, device, load


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        """`weights` is COG_WEIGHTS as given: a local path to the training's weights.pt."""
        self.device = device()
        if weights:
            self.model = load(weights.removeprefix("file://"), self.device)
        else:
            print("no COG_WEIGHTS: predicting with untrained weights")
            self.model = TinyLM().to(self.device)
        self.model.eval()

    def predict(
        self,
        prompt: str = Input(description="Text to continue", default="Train, then "),
        length: int = Input(description="Bytes to generate", default=80, ge=1, le=2000),
        temperature: float = Input(description="0 picks the likeliest byte every time", default=0.0, ge=0, le=2),
        seed: int = Input(description="Random seed", default=0),
    ) -> str:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        data = list(prompt.encode())
        data = [32] * max(0, CONTEXT - len(data)) + data
        with torch.no_grad():
            for _ in range(length):
                context = torch.tensor([data[-CONTEXT:]], device=self.device)
                logits = self.model(context)[0]
                if temperature == 0:
                    data.append(int(logits.argmax()))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    data.append(int(torch.multinomial(probs, 1, generator=generator)))
        return bytes(data[-length:]).decode("utf-8", errors="replace")
