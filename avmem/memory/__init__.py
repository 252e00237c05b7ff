"""Memory of the stream: the TTT layer (``ttt``) and the fixed-size token bank (``bank``)."""
