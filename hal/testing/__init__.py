"""Test tools shipped with hal so third-party drivers can use them: the conformance kit and the HIL plugin."""
