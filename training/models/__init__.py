"""Networks: a shared trunk (encoder + feature pyramid) and the multi-task wrapper."""
