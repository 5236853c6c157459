"""xenwb plugins: hypercall tracer, multicall decoder, event masks, pagetable walker."""
