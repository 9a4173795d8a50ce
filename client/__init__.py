"""The device side: the SDK an app embeds, the device, and the one Flower ClientApp.

Names are imported lazily, so ``import fedrec.client`` pulls in neither Flower nor torch;
``fedrec.client.sdk`` alone is what an app needs.
"""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Catalog": "sdk",
        "Contribution": "device",
        "DEFAULT_DP": "sdk",
        "DeployedDevices": "deployment",
        "DeployedSession": "deployment",
        "DeploymentDeviceFactory": "deployment",
        "Device": "device",
        "DeviceProvider": "client_app",
        "DeviceSession": "client_app",
        "DeviceStateStore": "state_store",
        "EvaluateRequest": "client_app",
        "Event": "sdk",
        "EventKind": "sdk",
        "FedRecClient": "sdk",
        "Freshness": "sdk",
        "ItemSignal": "interactions",
        "NODE_ID_META": "deployment",
        "PolicySignals": "sdk",
        "PrivacyPolicy": "sdk",
        "PrivacyReport": "sdk",
        "Recommendation": "sdk",
        "Recommendations": "sdk",
        "Refusal": "device",
        "RefusalCode": "sdk",
        "ReleaseHook": "device",
        "Retention": "sdk",
        "STATUS": "sdk",
        "StoreError": "sdk",
        "CorruptStoreError": "sdk",
        "StoredDevices": "state_store",
        "TrainRequest": "client_app",
        "TrainingPolicy": "sdk",
        "WeightPolicy": "sdk",
        "arrays_to_numpy": "client_app",
        "client_app": "deployment",
        "device_dp": "deployment",
        "import_events": "deployment",
        "item_signals": "interactions",
        "make_client_app": "client_app",
        "make_deployment_client_app": "deployment",
        "numpy_to_arrays": "client_app",
        "open_device": "deployment",
        "read_events_file": "deployment",
        "run_recipe": "deployment",
        "weights_from_events": "sdk",
    },
)
