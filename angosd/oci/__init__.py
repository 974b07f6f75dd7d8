"""Pure OCI domain: value objects, grammars and parsers. No Twisted, no I/O."""
