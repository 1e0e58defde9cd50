"""LabError: the drill lab could not be built, or a fault could not be made or mended."""


class LabError(RuntimeError):
    pass
