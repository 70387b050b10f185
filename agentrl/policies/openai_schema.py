"""Request models and errors of the OpenAI-compatible server (:mod:`agentrl.policies.server`).

The fields are OpenAI's (``/v1/completions``, ``/v1/chat/completions``) with their documented ranges,
plus vLLM's extensions for exact tokens (``top_k``, ``return_token_ids``,
``return_tokens_as_token_ids``). Unknown fields are ignored, as vLLM does. Parameters we cannot honour
(``echo``, ``best_of`` > n, non-zero penalties, ``logit_bias``, tools, logprobs while streaming) are a
400 naming the parameter, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, code: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # vLLM extension; -1 or 0 = no limit
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    return_token_ids: bool | None = None  # vLLM: prompt_token_ids / token_ids in each choice (we always add them)
    return_tokens_as_token_ids: bool = False  # vLLM: logprob tokens as "token_id:N"

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop accepts at most 4 sequences", code="invalid_value", param="stop")
        return tuple(s for s in stops if s)

    def unsupported(self) -> None:
        """Refuse what this server would otherwise ignore silently."""
        if self.presence_penalty or self.frequency_penalty:
            param = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            raise APIError(400, f"{param} is not supported by this server", code="unsupported_parameter", param=param)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", code="unsupported_parameter", param="logit_bias")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: text, token ids, or a list of either (one choice set per prompt)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, "only text content parts are supported", code="invalid_value", param="messages")
                parts.append(part["text"])
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
