"""Pure planning core: fleet spec + inventory + rollout state + reports + now -> plan.

Nothing in this package reads a clock, the environment, a file, a process or the
network: everything it needs is an argument.
"""
