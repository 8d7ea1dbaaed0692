# Turns a text file into a C string constant: cmake -DIN=... -DOUT=... -DNAME=... -P embed.cmake
# Used to put include/kiln_abi.h verbatim into every generated program (see src/cg/cg_file.c).
file(READ "${IN}" text)
string(REPLACE "\\" "\\\\" text "${text}")
string(REPLACE "\"" "\\\"" text "${text}")
string(REPLACE "\n" "\\n\"\n\"" text "${text}")
file(WRITE "${OUT}" "/* generated from ${IN} by cmake/embed.cmake; do not edit */\nconst char ${NAME}[] =\n\"${text}\";\n")
