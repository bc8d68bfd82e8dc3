"""The `ray_serve_llm` backend: a model served by Ray Serve LLM's own `LLMServer`.

    spec.py         policy model -> `LLMConfig` and the deployment's options (no engine)
    protocol.py     importing `LLMServer` without vLLM: OpenAI wire models for CPU runs
    engine.py       `SimulatedEngine`: the simulated GPU model as an `LLMEngine`
    engine_load.py  a replica's live load from the engine's own figures, else counted
    server.py       `RayLLMServer`: `LLMServer` plus rtcts's `generate`/`stream`/reports

Nothing here is imported by the rest of rtcts unless a policy names the backend; it
needs the `llm` extra (`pip install 'rtcts[llm]'`; with vLLM on a GPU node,
`pip install 'rtcts[llm]' 'ray[llm]'`). See docs/decisions.md, "Ray Serve LLM".
"""
