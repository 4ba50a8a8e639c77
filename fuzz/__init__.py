"""Coverage-guided fuzz harnesses (atheris). Each module has ``one_input(data)``, which
raises only on a defect, and ``main()`` for ``python -m fuzz.<module> [libFuzzer args]``.
See docs/fuzzing.md."""
