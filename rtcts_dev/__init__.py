"""Development tools for rtcts, kept out of the serving package.

    rtcts_dev.stripe_emulator   a local Stripe (meter-event subset) for `rtcts run` and tests
    rtcts_dev.demo              `rtcts demo`: replay a trace against a running rtcts
    rtcts_dev.trace             LLM request traces: load a CSV, compress it in time

They ship in the same distribution as the product; the emulator also needs the `dev`
extra (`pip install 'rtcts[dev]'`: jsonschema).
A tool may import `serve_app` (it drives the product); `serve_app` never imports a tool,
except `serve_app/cli.py` and `serve_app/local/`, lazily inside the function that needs it.
"""
