"""How a run meets its machines: joining a multi-process job (``distributed``), each
process's share of every batch (``host_data``), programs compiled by all processes before
any runs them (``lockstep``), coordinated preemption (``preemption``) and where files live,
local or ``gs://`` (``paths``)."""
