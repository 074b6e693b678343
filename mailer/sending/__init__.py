"""Sending: the send loop (prepare/freeze, claim, pipeline, retries, pause), claimant identity, and
the notices (confirmation, welcome) that use the same providers."""
