"""Device codecs and device types: pure functions from bytes to typed events and back."""
