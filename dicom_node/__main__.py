from dicom_node.admin.cli import main

main()
