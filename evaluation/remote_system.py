"""``openai:URL[,model=NAME]``: a model behind an OpenAI-compatible server, evaluated as users get it.

The answers come through the same completion engine as ``kaffee serve --backend``: Kaffee's
prompt (built with a local model directory's tokenizer and window, ``local=DIR``, the
bundled model by default), the backend's greedy text, Kaffee's stop rules and
post-processing. Unlike the server, the evaluation never lets the local model stand in:
a call the backend did not answer is a failed request, so the scores are the backend's.
"""

from __future__ import annotations

from kaffee.errors import KaffeeError
from kaffee.evaluation.system_base import Context, RequestFailed, SystemSpec, SystemUnavailable
from kaffee.evaluation.systems import EngineSystem

REMOTE_OPTIONS = ("model", "local", "api_key_env", "timeout_ms", "logprobs")


class RemoteSystem(EngineSystem):
    """An OpenAI-compatible ``/v1/completions`` endpoint behind Kaffee's engine."""

    capabilities = frozenset({"next_tokens", "complete"})  # no bits: the backend scores no given text

    def __init__(self, spec: SystemSpec, device: str = "cpu"):
        from kaffee.server.remote import RemoteBackend, parse_backend

        options = dict(spec.options)
        remote = {k: options.pop(k) for k in REMOTE_OPTIONS if k in options}
        local = remote.pop("local", None)
        if local is None:
            from kaffee.models import default_model_dir

            local = str(default_model_dir())
        try:
            numbers = {k: float(remote.pop(k)) for k in ("timeout_ms",) if k in remote}
            if "logprobs" in remote:
                numbers["logprobs"] = int(remote.pop("logprobs"))
        except ValueError as exc:
            raise KaffeeError(f"system spec {spec.text!r}: {exc}") from exc
        config = parse_backend(
            f"openai:{spec.target}",
            model=remote.get("model"),
            api_key_env=remote.get("api_key_env"),
            **{"timeout_ms": 30_000.0, **numbers},
        )
        engine_spec = SystemSpec("model", local, options, label=spec.label, text=spec.text)
        super().__init__(engine_spec, device=device)
        self.spec = spec
        self.backend = RemoteBackend(config, self.engine.tokenizer)
        self.engine.remote = self.backend
        self._fingerprint = f"{spec.text}@{self._fingerprint.rpartition('@')[2]}"
        self.engine.complete("class A {\n    int x = ", "")  # one call: is anyone there?
        if self.backend.stats.answered == 0:
            self.close()
            raise SystemUnavailable(f"{config.url} does not answer: {self.backend.down_reason}")

    def _checked(self, fn):
        failed = self.backend.stats.fallbacks
        result = fn()
        if self.backend.stats.fallbacks != failed:
            raise RequestFailed(f"the backend did not answer ({self.backend.down_reason or 'down'})")
        return result

    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        result = self._checked(lambda: super(RemoteSystem, self).next_tokens(ctx, k))
        if self.backend.has_logprobs is False:
            raise RequestFailed(f"{self.backend.config.url} returns no logprobs: no next-token list")
        return result

    def complete(self, ctx: Context) -> str:
        return self._checked(lambda: super(RemoteSystem, self).complete(ctx))

    def cost(self) -> dict:
        return {}  # the model's size is the server's business

    def health(self) -> str | None:
        backend = getattr(self, "backend", None)
        if backend is None:  # still building: the local engine's health
            return super().health()
        return None if backend.up else f"the backend is down: {backend.down_reason}"

    def close(self) -> None:
        self.backend.close()
