"""One screen per step. `SCREENS` maps step name → "module:Class" (imported lazily)."""

SCREENS: dict[str, str] = {
    "env": "lorawizard.tui.screens.environment:EnvironmentScreen",
    "models": "lorawizard.tui.screens.models:ModelsScreen",
    "dataset": "lorawizard.tui.screens.dataset:DatasetScreen",
    "captions": "lorawizard.tui.screens.captions:CaptionsScreen",
    "probe": "lorawizard.tui.screens.gpu:GpuScreen",
    "train": "lorawizard.tui.screens.train:TrainScreen",
}
