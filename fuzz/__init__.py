"""Coverage-guided fuzzing of fastlm's readers of untrusted input, with atheris (``pip install -e '.[fuzz]'``).

Each target module has a ``check(data: bytes)`` that feeds one input to fastlm and returns normally when fastlm
either accepts it or rejects it with the documented error; anything else (another exception, a run past
:data:`fuzz.harness.TIME_LIMIT_S` of CPU time, Python allocations beyond :func:`fuzz.harness.allocation_limit` of the
input's size) is a bug. Run one from the repository root::

    python -m fuzz.gguf --seconds 300          # GGUF header, tensors, tokenizer and chat template of a file
    python -m fuzz.safetensors --seconds 300   # a safetensors file of a Hugging Face checkpoint
    python -m fuzz.hf_config --seconds 300     # the config.json of that checkpoint, through the model it builds
    python -m fuzz.tokenizer --seconds 300     # tokenizer_config.json of a Hugging Face tokenizer directory
    python -m fuzz.templates --seconds 300     # chat template source and the messages rendered with it
    python -m fuzz.gguf crash-1234...          # replay inputs (a crash file, a corpus folder)

The inputs start from :mod:`fuzz.seeds` (tiny valid files, and the malformed ones of :mod:`fuzz.malformed`);
the growing corpus lives in ``fuzz/corpus/<target>/`` and failing inputs in ``fuzz/crashes/<target>/`` (both
ignored by git). Every input that once failed is kept in ``tests/data/fuzz/<target>/`` and replayed by
``tests/test_fuzz_regressions.py``. Without atheris installed, ``--seconds`` runs a plain random mutator.
"""
