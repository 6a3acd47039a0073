"""Reinforcement learning on a deep PNN: a gymnasium environment acted on through the
hardware (env), a seeded replay buffer (replay), the layer-local PIB + TD objective
(pib_td), the agent on the deployed units (agent) and the online / synchronous schemes
that overlap acting and learning or take turns (online)."""
