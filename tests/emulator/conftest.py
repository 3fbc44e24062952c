from tests.support.emulator import emulator, emulator_factory

__all__ = ["emulator", "emulator_factory"]
