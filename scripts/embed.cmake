# Turn a text file into a C string: -DIN=file -DOUT=file.c
file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUT} "/* Generated from ${IN}. */\n#include <stddef.h>\nconst char mqb_quickstart_yaml[] = {${bytes} 0};\nconst size_t mqb_quickstart_yaml_len = sizeof mqb_quickstart_yaml - 1;\n")
