"""Readers of kernel state: BPF programs and their statistics, our probes, ourselves."""
