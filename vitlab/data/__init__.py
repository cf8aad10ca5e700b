from vitlab.data.datamodules import (
    ClassificationDataModule,
    CSVDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
)

__all__ = ["CSVDataModule", "ClassificationDataModule", "FashionMNISTDataModule", "ImageFolderDataModule"]
