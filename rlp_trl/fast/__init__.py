"""The fast paths: prefix-shared sampling, the shared-prefix loss pass and batched scoring of true tokens; each is
checked equal to the plain computation it replaces (tests/test_speed_correctness.py, tests/test_packed_pass.py)."""
