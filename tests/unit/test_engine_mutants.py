"""Tests that kill mutants of the consensus engine that the rule-by-rule tests let live (issue 10)."""
