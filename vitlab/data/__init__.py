from vitlab.data.datamodules import (
    ClassificationDataModule,
    CSVDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    VitlabDataModule,
)
from vitlab.data.detection import CocoDetectionDataModule, ScenesDataModule

__all__ = ["CSVDataModule", "ClassificationDataModule", "CocoDetectionDataModule", "FashionMNISTDataModule",
           "ImageFolderDataModule", "ScenesDataModule", "VitlabDataModule"]
