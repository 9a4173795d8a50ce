"""The server side: the coordinator, the one round loop, the Flower transport and ServerApps."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CatalogProvider": "server_app",
        "Coordinator": "coordinator",
        "DeploymentStrategy": "deployment",
        "FlowerTransport": "flower_transport",
        "ItemEmbeddingStrategy": "strategy",
        "Reply": "coordinator",
        "Request": "round_loop",
        "RoundReport": "coordinator",
        "RunDirectory": "run_directory",
        "SumResult": "round_loop",
        "Transport": "round_loop",
        "evaluate_round": "round_loop",
        "initial_global_state": "coordinator",
        "make_coordinator": "coordinator",
        "make_deployment_server_app": "deployment",
        "make_server_app": "server_app",
        "new_run_dir": "run_directory",
        "reply_from_message": "flower_transport",
        "request_content": "flower_transport",
        "run_round": "round_loop",
        "run_rounds": "round_loop",
        "server_app": "deployment",
        "to_arrays": "flower_transport",
        "to_numpy": "flower_transport",
        "validate_delta": "validation",
    },
)
