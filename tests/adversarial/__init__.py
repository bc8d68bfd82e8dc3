"""Adversarial tests of issue #11 ("Nothing free, nothing lost"): one file per item,
each written first and seen failing on the code before its fix."""
