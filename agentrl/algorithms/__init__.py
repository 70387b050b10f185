"""Policy-gradient algorithms as pure torch functions, one module each, with paper names.

``grpo`` (GRPO / Dr.GRPO advantages), ``gigpo`` (GiGPO episode + step-level advantages), ``ppo``
(PPO-clip loss and aggregation), ``empg`` (EMPG advantage modulation), ``epo`` (EPO entropy terms),
``entropy`` (token and per-turn entropy, the entropy bonus), ``kl`` (k3 estimator), ``duration``
(the paper's duration weights and arrival-bias inclusion weights), ``covariance`` (Clip-Cov / KL-Cov).
Batch convention: one row per agent turn, a trajectory's rows contiguous and in turn order,
token tensors ``[S, L]`` with a response mask. Import the submodules directly; this package
imports nothing (``import agentrl`` stays light).
"""
