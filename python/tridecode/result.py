from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamChunk:
    """One run of newly committed output: its text (held back while it could still be the start of a stop
    string, so the chunks' texts add up to the result's text), its token ids, and their log-probabilities
    when logprobs=True (else None). The last chunk of a generation may carry text and no tokens."""

    text: str
    tokens: list
    logprobs: list | None = None


@dataclass
class GenerateResult:
    """What every generate mode returns.

    tokens: the new tokens only (the prompt excluded), at most max_new_tokens, ending at the first EOS when
        one was produced, or at the token that completed a stop string.
    text: the decoded output when the checkpoint has a tokenizer, ending before the first stop string.
    finish_reason: "stop" (EOS or a stop string), "length" (max_new_tokens) or "cancelled" (the cancel
        event was set).
    stop_string: the stop string that ended the output, if one did.
    logprobs: with logprobs=True, the natural log of the probability each token had in the softmax of the
        logits of the forward that chose it (temperature and top_k / top_p not applied).
    prompt_tokens: the prompt's length in tokens.
    nfe: the forward count as the reference implementation reports it for this mode (AR: one per token;
        diffusion: denoising + commit forwards, prefill excluded; self-spec: every forward).
    forwards: every model forward, the prefill included (comparable across modes).
    steps_per_block: diffusion only, denoising forwards of each block.
    accepted_per_cycle / drafts_per_cycle: self-spec only, tokens emitted and draft forwards per cycle.
    """

    tokens: list
    mode: str
    nfe: int
    forwards: int
    seconds: float
    stopped_on_eos: bool = False
    text: str | None = None
    steps_per_block: list | None = None
    accepted_per_cycle: list | None = None
    drafts_per_cycle: list | None = None
    finish_reason: str = "length"
    stop_string: str | None = None
    logprobs: list | None = None
    prompt_tokens: int = 0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mean_accepted(self) -> float | None:
        """Self-spec: mean tokens emitted per cycle."""
        if not self.accepted_per_cycle:
            return None
        return sum(self.accepted_per_cycle) / len(self.accepted_per_cycle)

    def summary(self) -> str:
        parts = [f"mode={self.mode}", f"finish={self.finish_reason}", f"tokens={len(self.tokens)}", f"nfe={self.nfe}", f"forwards={self.forwards}",
                 f"TPF={self.tokens_per_forward:.2f}"]
        if self.mean_accepted is not None:
            parts.append(f"mean_accepted={self.mean_accepted:.2f}")
        if self.steps_per_block:
            parts.append(f"blocks={len(self.steps_per_block)}")
        parts += [f"seconds={self.seconds:.3f}", f"tokens/s={self.tokens_per_second:.1f}"]
        return " ".join(parts)
