from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerateResult:
    """What every generate mode returns.

    tokens: the new tokens only (the prompt excluded), ending at the first EOS when one was produced.
    nfe: the forward count as the reference implementation reports it for this mode.
    forwards: every model forward, the prefill included.
    """

    tokens: list
    mode: str
    nfe: int
    forwards: int
    seconds: float
    stopped_on_eos: bool = False
    text: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return (f"mode={self.mode} tokens={len(self.tokens)} nfe={self.nfe} forwards={self.forwards} "
                f"tokens/forward={self.tokens_per_forward:.2f} seconds={self.seconds:.3f} "
                f"tokens/s={self.tokens_per_second:.1f}")
