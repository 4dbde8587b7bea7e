"""predilect.dicom: DICOM integration beside the thin client SDK (the ``[dicom]`` extra).

``reader`` turns an OP / VL Photographic / Secondary Capture instance into the payloads the
service screens (pydicom; imports nothing but the core, so training reads DICOM records with
it); ``sr`` writes a screening result as a Comprehensive SR (highdicom); ``gateway`` is the
C-STORE SCP that screens what it receives through the client SDK (pynetdicom)::

    from predilect.dicom.sr import structured_report
"""
