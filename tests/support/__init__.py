"""What the tests share: the servers and simulators they start, and the helpers more than one test module uses.

Test modules import from here (`from support.cogserver import start_cog_server`), never from each other;
`tests/conftest.py` holds only fixtures. pytest puts `tests/` on `sys.path` (its default `prepend` import
mode, since `tests/conftest.py` has no `__init__.py` beside it), which is what makes `support` importable.
"""
