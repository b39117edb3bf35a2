"""Pure detectors: lines, process exits and an injected clock in, findings out."""
